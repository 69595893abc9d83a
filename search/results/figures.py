"""The figures of report.html, drawn with matplotlib into PNG bytes (no browser, no display).

Drawn here rather than with optuna.visualization.matplotlib, whose plots leave out what a
search under an early-stopping scheduler (ASHA, HyperBand) is about: its optimisation history
and parallel coordinates show completed trials only (the few survivors), nothing marks a stopped trial, and its
importances cannot be computed on the value every trial reached at a rung. Optuna still
computes the importances (search.results.leaderboard.importances_for).

Each function returns a Figure or None when there is nothing to draw yet. The history and the
CV-vs-holdout figures take the recipe point's seed band (a Band: its scores under several seeds,
mean +- std) when the search repeated it: a trial inside the band is no further from the recipe
point than a change of seed moves it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

COMPLETED, STOPPED, BEST, PRIVATE_COLOUR = "#1f77b4", "#9a9a9a", "#d62728", "#ff7f0e"
SIZE = (7.5, 4.2)  # inches at 100 dpi: 750 x 420 pixels
BAND, BAND_ALPHA = "#2ca02c", 0.18  # green, translucent: the dots stay readable inside the band


@dataclass(frozen=True)
class Band:
    """A configuration's spread under several seeds: mean +- std, and its legend label."""

    mean: float
    std: float
    label: str

    @property
    def low(self) -> float:
        return self.mean - self.std

    @property
    def high(self) -> float:
        return self.mean + self.std


def draw_band(axes, band: Band, vertical: bool = False) -> None:
    """`band` across the whole plot: a translucent span from mean - std to mean + std with a
    line at the mean (vertical: along the x axis)."""
    span, line = (axes.axvspan, axes.axvline) if vertical else (axes.axhspan, axes.axhline)
    span(band.low, band.high, color=BAND, alpha=BAND_ALPHA, linewidth=0, label=band.label, zorder=1)
    line(band.mean, color=BAND, linewidth=1.2, zorder=2)


def png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def history(numbers: Sequence[int], best: Sequence[float], stopped: Sequence[bool], metric: str,
            stopped_label: str, band: Band | None = None) -> Figure | None:
    """Each trial's best `metric` in the order the trials were proposed, stopped trials as
    crosses (legend: `stopped_label`, the scheduler's "stopped by ASHA"), the best so far, and
    the recipe point's seed `band` of `metric` when there is one."""
    if not numbers:
        return None
    figure = Figure(figsize=SIZE)
    axes = figure.subplots()
    if band is not None:
        draw_band(axes, band)
    xs, ys, crossed = np.asarray(numbers), np.asarray(best, float), np.asarray(stopped, bool)
    axes.scatter(xs[~crossed], ys[~crossed], color=COMPLETED, label="completed", zorder=3)
    axes.scatter(xs[crossed], ys[crossed], color=STOPPED, marker="x", label=stopped_label, zorder=3)
    axes.step(xs, np.fmax.accumulate(np.where(np.isfinite(ys), ys, -np.inf)), where="post", color=BEST,
              label="best so far")
    axes.set(xlabel="trial (in the order proposed)", ylabel=f"best {metric}")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.legend(loc="lower right")
    axes.grid(alpha=0.3)
    return figure


def learning_curves(curves: Sequence[tuple[dict[int, float], bool]], rungs: Sequence[int],
                    metric: str, stopped_label: str) -> Figure | None:
    """`metric` per epoch of every trial (dict epoch -> value, whether the scheduler stopped it:
    `stopped_label` in the legend), with the scheduler's rungs as vertical lines."""
    if not any(values for values, _ in curves):
        return None
    figure = Figure(figsize=SIZE)
    axes = figure.subplots()
    style: dict[str, Any]  # Axes.plot's keywords, of mixed types
    for values, stopped in curves:
        epochs = sorted(values)
        ys = [values[e] for e in epochs]
        style = dict(color=STOPPED, linestyle="--", alpha=0.8) if stopped else dict(color=COMPLETED, alpha=0.9)
        axes.plot(epochs, ys, marker="x" if stopped else "", markevery=[len(epochs) - 1], **style)
    for rung in rungs:
        axes.axvline(rung, color="black", linestyle=":", linewidth=1)
        axes.text(rung, 1.0, f" rung {rung}", transform=axes.get_xaxis_transform(), va="top", fontsize=8)
    axes.plot([], [], color=COMPLETED, label="completed")
    axes.plot([], [], color=STOPPED, linestyle="--", marker="x", label=stopped_label)
    axes.set(xlabel="epoch", ylabel=metric)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.legend(loc="lower right")
    axes.grid(alpha=0.3)
    return figure


def parallel_coordinates(params: pd.DataFrame, score: pd.Series, name: str) -> Figure | None:
    """One line per trial across an axis per searched parameter (numbers scaled to the range
    searched, text values evenly spaced) and the score, coloured by the score."""
    keep = score.notna()
    params, score = params[keep], score[keep]
    if params.empty or params.shape[1] == 0:
        return None
    columns, ticks = [], []
    for column in params.columns:
        values = params[column]
        numeric = pd.to_numeric(values, errors="coerce")
        if numeric.notna().all():
            low, high = float(numeric.min()), float(numeric.max())
            columns.append((numeric - low) / (high - low) if high > low else numeric * 0 + 0.5)
            ticks.append([(0, f"{low:.3g}"), (1, f"{high:.3g}")] if high > low else [(0.5, f"{low:.3g}")])
        else:
            levels = sorted(values.astype(str).unique())
            position = {level: i / max(len(levels) - 1, 1) for i, level in enumerate(levels)}
            columns.append(values.astype(str).map(position))
            ticks.append([(position[level], level) for level in levels])
    low, high = float(score.min()), float(score.max())
    columns.append((score - low) / (high - low) if high > low else score * 0 + 0.5)
    ticks.append([(0, f"{low:.4f}"), (1, f"{high:.4f}")])
    table = np.column_stack([np.asarray(c, float) for c in columns])
    figure = Figure(figsize=(max(SIZE[0], 1.6 * table.shape[1]), SIZE[1]))
    axes = figure.subplots()
    shade = (score.to_numpy() - low) / (high - low) if high > low else np.ones(len(score))
    cmap = colormaps["viridis"]  # yellow: the best score, purple: the worst
    for row, value in zip(table, shade):
        axes.plot(range(table.shape[1]), row, color=cmap(value), alpha=0.85)
    for x, marks in enumerate(ticks):
        axes.axvline(x, color="black", linewidth=0.8)
        for y, label in marks:
            axes.text(x + 0.03, y, label, fontsize=8, va="center")
    axes.set_xticks(range(table.shape[1]), [*params.columns, name], rotation=15, fontsize=8)
    axes.set_yticks([])
    axes.set_xlim(-0.2, table.shape[1] - 0.5)
    return figure


def importance_bars(panels: Sequence[tuple[str, dict[str, float] | None]]) -> Figure | None:
    """Side by side bar charts of parameter importances, one per (title, importances)."""
    drawn = [(title, values) for title, values in panels if values]
    if not drawn:
        return None
    figure = Figure(figsize=(SIZE[0], 0.6 + 0.45 * max(len(v) for _, v in drawn) + 1.2))
    for axes, (title, values) in zip(figure.subplots(1, len(drawn), squeeze=False)[0], drawn):
        names = list(values)[::-1]
        axes.barh(names, [values[n] for n in names], color=COMPLETED)
        axes.set(title=title, xlim=(0, 1), xlabel="importance (fANOVA)")
        axes.tick_params(axis="y", labelsize=8)
    figure.tight_layout()
    return figure


def fold_spread(trials: Sequence[str], folds: Sequence[Sequence[float]]) -> Figure | None:
    """Each fold's score of the given trials (best first), with their mean."""
    pairs = [(trial, scores) for trial, scores in zip(trials, folds) if len(scores)]
    if not pairs:
        return None
    figure = Figure(figsize=SIZE)
    axes = figure.subplots()
    for x, (_, scores) in enumerate(pairs):
        axes.scatter([x] * len(scores), scores, color=COMPLETED, zorder=3)
        axes.hlines(np.mean(scores), x - 0.25, x + 0.25, color=BEST)
        for k, score in enumerate(scores):
            axes.annotate(f"fold {k}", (x, score), xytext=(6, 0), textcoords="offset points", fontsize=7, va="center")
    axes.set_xticks(range(len(pairs)), [trial for trial, _ in pairs], rotation=15, fontsize=8)
    axes.set(ylabel="fold LWLRAP at the best epoch", xlim=(-0.6, len(pairs) - 0.4))
    axes.plot([], [], color=BEST, label="mean of the folds")
    axes.legend(loc="best")
    axes.grid(alpha=0.3, axis="y")
    return figure


def cv_versus(score: pd.Series, public: pd.Series, private: pd.Series | None, what: str,
              cv_band: Band | None = None, what_band: Band | None = None) -> Figure | None:
    """The trials' CV score against their `what` scores (public dots, private triangles), with
    the line of equality; the recipe point's seed bands when there are: of its CV scores
    (vertical) and of its `what` scores (horizontal)."""
    shown = score.notna() & public.notna()
    if not shown.any():
        return None
    figure = Figure(figsize=(5.2, 4.6))
    axes = figure.subplots()
    axes.scatter(score[shown], public[shown], color=COMPLETED, label=f"{what} public", zorder=3)
    values = [*score[shown], *public[shown]]
    if private is not None and (score.notna() & private.notna()).any():
        both = score.notna() & private.notna()
        axes.scatter(score[both], private[both], color=PRIVATE_COLOUR, marker="^", label=f"{what} private", zorder=3)
        values += [*private[both]]
    for band, vertical in ((cv_band, True), (what_band, False)):
        if band is not None:
            draw_band(axes, band, vertical)
            values += [band.low, band.high]  # the limits below are set by hand: the band must fit in them
    low, high = min(values), max(values)
    pad = max((high - low) * 0.08, 0.005)
    axes.plot([low - pad, high + pad], [low - pad, high + pad], color="black", linewidth=1, linestyle=":",
              label="equality")
    axes.set(xlabel="CV (score)", ylabel=what, xlim=(low - pad, high + pad), ylim=(low - pad, high + pad))
    axes.set_aspect("equal")
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)  # beside: the curve fills the plot
    axes.grid(alpha=0.3)
    return figure


def hill_climbing(trials: Sequence[str], scores: Sequence[float], nested: float, nested_single: float) -> Figure | None:
    """The OOF score of an ensemble after each step of its selection, each point labelled with
    the trial it added, beside the nested scores of the selection and of choosing one trial."""
    if not scores:
        return None
    figure = Figure(figsize=SIZE)
    axes = figure.subplots()
    steps = np.arange(len(scores))
    axes.plot(steps, scores, marker="o", color=COMPLETED, label="in-sample OOF LWLRAP")
    for step, trial, score in zip(steps, trials, scores):
        axes.annotate(trial if step == 0 else f"+{trial}", (step, score), textcoords="offset points", xytext=(0, 6),
                      ha="center", fontsize=7)
    axes.axhline(nested, color=BEST, linestyle="--", label="nested CV of the ensemble")
    axes.axhline(nested_single, color=PRIVATE_COLOUR, linestyle="-.", label="nested CV of choosing one trial")
    axes.axhline(scores[0], color=STOPPED, linestyle=":", label="the best single trial (in-sample)")
    axes.set(xlabel="step (0: the best single trial)", ylabel="OOF LWLRAP")
    axes.margins(x=0.08, y=0.15)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)  # beside: the curve fills the plot
    axes.grid(alpha=0.3)
    return figure
