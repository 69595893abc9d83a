"""A blend of trials: their predictions aligned (Library, read from their exports) and the
blend chosen on them with its nested CV (Ensemble, search.results.blend's selection); beside
it the best configuration's seeds averaged (SeedEnsemble) and the blend's nested gain against
the seed noise (SeedVerdict).

search/ensemble.py finds the candidates, exports those without an export, builds the Ensemble
and writes its files (weights.json: search.results.records).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from search.results.blend import Blend, NestedScore, nested_score, ranks, select
from search.results.exports import OOF_FILE, SUBMISSION, species_columns
from search.results.holdout import holdout_scores
from search.results.seeds import STANDARD_ERRORS, Margin, Seeds
from search.results.trials import EXPORTS
from trainable.data.folds import species_matrix
from trainable.data.layouts import DEFAULT_DATASET, load_annotations
from trainable.metrics import lwlrap


class EnsembleError(Exception):
    """Trials that cannot be blended; the message is one line (exit 2, nothing written)."""


@dataclass(frozen=True)
class Candidate:
    """A scored trial that may join the blend."""

    experiment: Path
    trial: str  # its id
    score: float  # its leaderboard score
    checkpoint: Path  # its newest checkpoint
    config: dict[str, Any]  # the checkpoint's config, dotted keys

    @property
    def exports(self) -> Path:
        return self.experiment / EXPORTS / f"trial_{self.trial}"

    @property
    def key(self) -> tuple[Path, str]:
        """Which trial it is, wherever its experiment was named from."""
        return self.experiment.resolve(), self.trial

    @property
    def dataset(self) -> str:
        """The data layout it was trained on (data.dataset; a trial older than the key: RFCx)."""
        return self.config.get("data.dataset", DEFAULT_DATASET)

    def __str__(self) -> str:
        return f"trial {self.trial} of {self.experiment}"


@dataclass(frozen=True)
class Library:
    """The candidates' predictions, aligned: out-of-fold on the same recordings and folds, and
    the submission on the same test recordings."""

    candidates: list[Candidate]
    recording_ids: list[str]  # (N,), sorted
    folds: np.ndarray  # (N,) the fold that held each recording out
    truth: np.ndarray  # (N, C) the tp species of each recording
    oof: np.ndarray  # (M, N, C)
    test_ids: list[str]  # (T,) the data layout's test recordings, in its order
    submissions: np.ndarray  # (M, T, C)
    dataset: str  # data.dataset: the layout that writes the submission

    @property
    def columns(self) -> list[str]:
        return species_columns(self.truth.shape[1])

    @staticmethod
    def load(pool: list[Candidate], data_dir: Path) -> Library:
        """Read the candidates' oof.csv and submission.csv.

        Raises:
            EnsembleError: an oof.csv without every train_tp recording of the data or every
                fold, or holding other folds or recordings than the others; a submission of
                other test recordings.
        """
        name = pool[0].dataset
        annotations = load_annotations(data_dir, name)
        columns = species_columns(annotations.n_species)
        expected = sorted(set(annotations.tp.recording))
        oofs, submissions, first = [], [], None
        for candidate in pool:
            oof = pd.read_csv(candidate.exports / OOF_FILE, dtype={"recording_id": str}).sort_values("recording_id")
            if list(oof.recording_id) != expected:
                raise EnsembleError(f"{candidate.exports / OOF_FILE} does not hold every train_tp recording of"
                                    f" {data_dir} once ({len(oof)} rows, {len(expected)} recordings)")
            n_folds = candidate.config["data.n_folds"]
            if sorted(set(oof.fold)) != list(range(n_folds)):
                raise EnsembleError(f"{candidate.exports / OOF_FILE} has predictions of folds"
                                    f" {sorted(set(oof.fold))} only, of {n_folds}")
            if first is not None and not (oof.fold.to_numpy() == first.fold.to_numpy()).all():
                raise EnsembleError(f"{candidate} held other recordings out in its folds than {pool[0]}")
            first = oof if first is None else first
            submission = pd.read_csv(candidate.exports / SUBMISSION, dtype={"recording_id": str})
            if sorted(submission.recording_id) != sorted(annotations.test_ids):
                raise EnsembleError(f"{candidate.exports / SUBMISSION} does not hold the test recordings of"
                                    f" {data_dir} ({len(submission)} rows, {len(annotations.test_ids)} recordings)")
            oofs.append(oof[columns].to_numpy(np.float64))
            submissions.append(submission.set_index("recording_id").loc[list(annotations.test_ids), columns]
                               .to_numpy(np.float64))
        assert first is not None  # the pool is not empty (pool[0] above): its first oof
        return Library(pool, expected, first.fold.to_numpy(), species_matrix(annotations.tp, expected, len(columns)),
                       np.stack(oofs), list(annotations.test_ids), np.stack(submissions), name)


@dataclass(frozen=True)
class Ensemble:
    """The blend chosen on all OOF rows, and its nested CV."""

    blend: Blend
    nested: NestedScore
    nested_single: NestedScore  # the same nested CV of choosing one trial (max_steps 0)
    average: str  # AVERAGES
    singles: list[float]  # each candidate's OOF LWLRAP (of its probabilities, whatever the averaging)

    @staticmethod
    def build(library: Library, average: str, max_steps: int, tolerance: float) -> Ensemble:
        oof = ranks(library.oof) if average == "rank" else library.oof
        space = "" if average == "probability" else "; the scores below are of the ranks"
        print(f"[rfcx-tune] ensemble selection over {len(library.candidates)} trials on {len(library.recording_ids)}"
              f" recordings' out-of-fold predictions ({average} averaging{space})", flush=True)
        blend = select(oof, library.truth, max_steps, tolerance)
        for number, step in enumerate(blend.path):
            added = library.candidates[step.model].trial
            print(f"[rfcx-tune] step {number}: {'trial ' + added + ' alone' if number == 0 else '+ ' + added}:"
                  f" oof lwlrap {step.score:.4f}", flush=True)
        ended = (f"--max-steps {max_steps} reached" if len(blend.path) > max_steps
                 else f"no trial adds more than {tolerance:g}")
        nested = nested_score(oof, library.truth, library.folds, max_steps, tolerance)
        nested_single = nested_score(oof, library.truth, library.folds, max_steps=0)
        best = library.candidates[blend.path[0].model].trial
        chosen = int((blend.counts > 0).sum())
        print(f"[rfcx-tune] {ended}: an ensemble of {chosen} trial{'s' if chosen > 1 else ''}\n"
              f"[rfcx-tune] in-sample oof lwlrap: the ensemble {blend.score:.4f}, the best single trial {best}"
              f" {blend.path[0].score:.4f}\n"
              f"[rfcx-tune] nested oof lwlrap (each fold's recordings blended by the weights chosen on the other"
              f" folds): the ensemble {nested.score:.4f}, one trial chosen the same way {nested_single.score:.4f}",
              flush=True)
        return Ensemble(blend, nested, nested_single, average, [lwlrap(library.truth, p) for p in library.oof])

    def apply(self, predictions: np.ndarray) -> np.ndarray:
        return self.blend.apply(ranks(predictions) if self.average == "rank" else predictions)


@dataclass(frozen=True)
class SeedEnsemble:
    """The best configuration's seeds averaged with equal weights: the cheapest ensemble of all.
    Nothing in it is chosen on the labels, so its OOF LWLRAP needs no nested CV."""

    group: str  # the seed group: the id of the configuration's first trial
    trials: list[str]
    oof_lwlrap: float
    seed_scores: list[float]  # each seed's own OOF LWLRAP (of its probabilities, as Ensemble.singles)
    submission: pd.DataFrame  # recording_id, s0..: the seeds' test predictions averaged
    holdout: dict[str, float]  # the submission's public and private LWLRAP; {} without test_truth.csv

    @property
    def seeds(self) -> Seeds:
        return Seeds(tuple(self.seed_scores))

    @staticmethod
    def build(library: Library, group: str, average: str, truth: pd.DataFrame | None) -> SeedEnsemble:
        """Average the library's (the seeds') predictions, as ranks under rank averaging so that
        its score sits on the same footing as the trial ensemble's.

        Args:
            truth: test_truth.csv (search.results.holdout.load_truth), or None.
        """
        def averaged(predictions: np.ndarray) -> np.ndarray:
            return (ranks(predictions) if average == "rank" else predictions).mean(axis=0)

        submission = pd.DataFrame(averaged(library.submissions), columns=library.columns)
        submission.insert(0, "recording_id", library.test_ids)
        seeds = SeedEnsemble(group, [c.trial for c in library.candidates],
                             lwlrap(library.truth, averaged(library.oof)),
                             [lwlrap(library.truth, p) for p in library.oof], submission,
                             {} if truth is None else holdout_scores(submission, truth))
        alone = seeds.seeds
        print(f"[rfcx-tune] seed ensemble: the best configuration {group}'s {alone.n} seeds averaged"
              f" ({', '.join(seeds.trials)}): oof lwlrap {seeds.oof_lwlrap:.4f}; its seeds alone"
              f" {alone.mean:.4f} +- {alone.std:.4f} (mean +- std)", flush=True)
        return seeds


@dataclass(frozen=True)
class SeedVerdict:
    """The trial ensemble judged against the seeds: its nested gain in units of the recipe
    point's seed noise, and the seed ensemble beside it."""

    gain: Margin  # the nested ensemble over one trial chosen the same nested way (nested_gain)
    noise: Seeds | None  # the recipe point's seeds (its leaderboard scores); None: not repeated
    seeds: SeedEnsemble | None  # None: the best configuration has fewer than two seeds to average

    def line(self) -> str:
        """"the ensemble's nested gain over one trial chosen the same way: +0.0066 = +0.2 sd,
        within the noise (2 SE = 0.1188), against the recipe point's seed std 0.0420 over 3 seeds"."""
        start = f"[rfcx-tune] the ensemble's nested gain over one trial chosen the same way: {self.gain.text()}"
        n = 0 if self.noise is None else self.noise.n
        if not math.isfinite(self.gain.threshold):
            return (f"{start}: the recipe point has {n} completed seed{'s' if n != 1 else ''}"
                    f" (search/run.py --repeats trains it under more)")
        assert self.noise is not None  # a finite threshold comes from its std
        return f"{start}, against the recipe point's seed std {self.noise.std:.4f} over {n} seeds"


def nested_gain(nested: float, nested_single: float, noise: Seeds | None) -> Margin:
    """`nested` - `nested_single` against the seed noise: 2 standard errors of the difference
    of two single figures, each with the recipe point's seed std (as seeds.margin does for means).

    The gain is taken over one trial chosen the same nested way, not over the best
    configuration's seed mean: both figures come from the same procedure on the same rows, so
    their difference is the blending alone, while the seed mean belongs to the configuration
    picked as the best of many on these very labels (the winner's curse this comparison is
    there to expose) and exists only once a confirmation round ran; the nested single choice
    always does.
    """
    value = nested - nested_single
    std = noise.std if noise is not None else math.nan
    if not std > 0:
        return Margin(value, math.nan, math.nan)
    return Margin(value, value / std, STANDARD_ERRORS * std * math.sqrt(2))  # sqrt(1/1 + 1/1): one figure each
