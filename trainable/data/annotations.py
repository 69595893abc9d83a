"""The annotations of a data directory, whatever its layout: events by kind, species count and
test recordings (a layout reads them: trainable.data.layouts.load_annotations).

Every reader outside trainable/data/layouts sees events in the neutral columns EVENT_COLUMNS;
only a layout's module knows its files and their column names.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

# recording (str), species (int in [0, n_species)), start_s < end_s (seconds from the clip
# start), kind ("tp": the species calls there; "fp": a similar sound that is not the species)
EVENT_COLUMNS = ("recording", "species", "start_s", "end_s", "kind")
KINDS = ("tp", "fp")


class AnnotationError(ValueError):
    """A problem in the annotations or the audio they point to; the message is one line."""


@dataclass(frozen=True)
class Annotations:
    """The validated annotations of one data directory.

    Attributes:
        tp: the positive events (columns EVENT_COLUMNS, kind "tp").
        fp: the negative events, same columns (kind "fp").
        test_ids: the test recordings a submission scores, in its order (empty without a submission
            template: Dataset.submission_recordings).
        n_species: number of species; species are in [0, n_species).
    """

    tp: pd.DataFrame
    fp: pd.DataFrame
    test_ids: tuple[str, ...]
    n_species: int

    @classmethod
    def from_events(cls, events: pd.DataFrame, test_ids: tuple[str, ...], n_species: int) -> Annotations:
        """Split one events table (EVENT_COLUMNS) by kind, refusing what no layout may hand over.

        Raises:
            AnnotationError: a missing column, an unknown kind, a species outside [0, n_species)
                or an event not 0 <= start_s < end_s; one line.
        """
        missing = [c for c in EVENT_COLUMNS if c not in events.columns]
        if missing:
            raise AnnotationError(f"events lack column(s) {', '.join(missing)} (expected {','.join(EVENT_COLUMNS)})")
        unknown = sorted(set(events.kind) - set(KINDS))
        if unknown:
            raise AnnotationError(f"events of unknown kind {unknown[0]!r} (expected {' or '.join(KINDS)})")
        bad = events[(events.species < 0) | (events.species >= n_species) | (events.start_s < 0)
                     | ~(events.start_s < events.end_s)]
        if len(bad):
            first, more = bad.iloc[0], f" [and {len(bad) - 1} more like it]" if len(bad) > 1 else ""
            raise AnnotationError(f"event of recording {first.recording!r} (species {first.species},"
                                  f" {first.start_s}-{first.end_s} s) needs species in [0, {n_species}) and"
                                  f" 0 <= start_s < end_s{more}")
        by_kind = {kind: events[events.kind == kind].reset_index(drop=True) for kind in KINDS}
        return cls(tp=by_kind["tp"], fp=by_kind["fp"], test_ids=tuple(test_ids), n_species=n_species)

    @property
    def train_ids(self) -> list[str]:
        """Every annotated train recording (tp or fp), sorted."""
        return sorted(set(self.tp.recording) | set(self.fp.recording))
