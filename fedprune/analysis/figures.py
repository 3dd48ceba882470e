"""The report's figures, drawn with matplotlib's Agg renderer (no display, no pyplot state).

Each ``plot_*`` function takes the parsed runs and a PNG path, writes the figure and
returns the path. One colour per method across all figures and runs; with several runs,
one line style / marker per run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import cast

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from fedprune.analysis.runs import (
    Run,
    accuracy_vs_mb,
    device_points,
    diagnostics_by_round,
    last_round_accuracies,
    personal_accuracy_by_round,
    series_label,
    trained_accuracy_by_round,
)

DPI = 110
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def method_colors(runs: Sequence[Run]) -> dict[str, str]:
    """A fixed colour per method, in order of first appearance."""
    palette = [f"C{i}" for i in range(10)]
    colors: dict[str, str] = {}
    for run in runs:
        for method in run.methods:
            colors.setdefault(method, palette[len(colors) % len(palette)])
    return colors


def _figure(width: float = 7.0, height: float = 4.5) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")


def _legend(ax, **kwargs) -> None:
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize="small", **kwargs)


def _lines(ax: Axes, runs: Sequence[Run], series, suffix: str = "", dashed: bool = False) -> None:
    """One line per method and run of ``series(records, method) -> [(x, y)]`` on ``ax``."""
    colors, several = method_colors(runs), len(runs) > 1
    for r, run in enumerate(runs):
        for method in run.methods:
            points = series(run.records, method)
            if points:
                x, y = zip(*points, strict=True)
                style = "--" if dashed else LINESTYLES[r % len(LINESTYLES)]
                ax.plot(x, y, color=colors[method], linestyle=style, marker=MARKERS[r % len(MARKERS)],
                        markersize=4, label=series_label(method, run, several) + suffix)


def _accuracy_lines(runs: Sequence[Run], path: Path, series, title: str, xlabel: str,
                    integer_x: bool, trained=None, ylabel: str = "personal accuracy (fraction correct)") -> Path:
    """``series`` per method and run (and, dashed, ``trained``) against x."""
    fig, ax = _figure()
    _lines(ax, runs, series, " received" if trained else "")
    if trained is not None:
        _lines(ax, runs, trained, " trained", dashed=True)
    if not ax.lines:
        _empty(ax, "no personal-accuracy records")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if integer_x:
        cast(MaxNLocator, ax.xaxis.get_major_locator()).set_params(integer=True)  # the default AutoLocator
    ax.grid(alpha=0.3)
    _legend(ax, loc="best")
    return _save(fig, path)


def plot_accuracy_vs_round(runs: Sequence[Run], path: Path) -> Path:
    """Mean personal accuracy per round (plain mean over the clients evaluated that round):
    received (solid) and right after local training (dashed)."""
    return _accuracy_lines(runs, path, personal_accuracy_by_round,
                           "Personal accuracy per round (mean over clients)", "round", True,
                           trained=trained_accuracy_by_round)


def plot_mask_diagnostics(runs: Sequence[Run], path: Path) -> Path:
    """Per round: mean pairwise Jaccard overlap of the clients' masks, and their overlap with the
    initial model's own magnitude mask."""
    fig = Figure(figsize=(11.0, 4.5), dpi=DPI)
    FigureCanvasAgg(fig)
    panels = fig.subplots(1, 2)
    for ax, key, title in zip(panels, ("mask_jaccard", "initial_magnitude_overlap"),
                              ("Overlap between clients' masks (mean pairwise Jaccard)",
                               "Overlap with the initial model's magnitude mask"), strict=True):
        _lines(ax, runs, lambda records, method, key=key: diagnostics_by_round(records, method, key))
        if not ax.lines:
            _empty(ax, "no masks")
        ax.set_title(title, fontsize="medium")
        ax.set_xlabel("round")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        _legend(ax, loc="best")
    return _save(fig, path)


def plot_accuracy_vs_mb(runs: Sequence[Run], path: Path) -> Path:
    """Mean received personal accuracy versus cumulative MB (up + down) of the method's messages."""
    return _accuracy_lines(runs, path, accuracy_vs_mb, "Received personal accuracy versus communication",
                           "cumulative communication, up + down (MB = $10^6$ bytes)", False,
                           ylabel="received personal accuracy (fraction correct)")


def plot_accuracy_distribution(runs: Sequence[Run], path: Path) -> Path:
    """Box plot of per-client personal accuracy at each method's last evaluated round,
    with every client drawn as a point."""
    colors, several = method_colors(runs), len(runs) > 1
    groups = []  # (label, method, accuracies)
    for run in runs:
        for method in run.methods:
            rnd, by_client = last_round_accuracies(run.records, method)
            if by_client:
                label = series_label(method, run, several)
                groups.append((f"{label}\n(round {rnd})", method, [by_client[c] for c in sorted(by_client)]))
    fig, ax = _figure(width=max(7.0, 0.9 * len(groups) + 2))
    if groups:
        positions = np.arange(1, len(groups) + 1)
        ax.boxplot([g[2] for g in groups], positions=positions, widths=0.5, showfliers=False,
                   medianprops={"color": "black"})
        jitter = np.random.default_rng(0)
        for pos, (_, method, values) in zip(positions, groups, strict=True):
            xs = pos + jitter.uniform(-0.15, 0.15, size=len(values))
            ax.scatter(xs, values, s=16, color=colors[method], alpha=0.8, zorder=3, edgecolors="none")
        ax.set_xticks(positions, [g[0] for g in groups], rotation=30 if len(groups) > 4 else 0,
                      ha="right" if len(groups) > 4 else "center", fontsize="small")
        ax.set_xlim(0.4, len(groups) + 0.6)
    else:
        _empty(ax, "no personal-accuracy records")
    ax.set_title("Received personal accuracy across clients at the last evaluated round")
    ax.set_xlabel("method" + (" [run]" if several else "") + " (one point per client)")
    ax.set_ylabel("received personal accuracy (fraction correct)")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_speedup_vs_sparsity(runs: Sequence[Run], path: Path, show_flop_limit: bool = True) -> Path:
    """Measured speedup (dense / personal latency) versus each client's last sparsity,
    pooled per method over runs; the 1/(1-s) limit as a curve, FLOP limits as hollow marks."""
    fig, ax = _figure()
    colors = method_colors(runs)
    pooled: dict[str, list[dict]] = {}
    for run in runs:
        for method in run.methods:
            pooled.setdefault(method, []).extend(device_points(run.records, method))
    pooled = {m: p for m, p in pooled.items() if p}
    if pooled:
        all_points = [p for points in pooled.values() for p in points]
        top = max(p["sparsity"] for p in all_points)
        s = np.linspace(0.0, min(max(top + 0.05, 0.5), 0.99), 200)
        ax.plot(s, 1.0 / (1.0 - s), color="0.3", linewidth=1.2, label="limit 1/(1 - sparsity)")
        ax.axhline(1.0, color="0.6", linewidth=0.8, linestyle=":")
        for method, points in pooled.items():
            xs = [p["sparsity"] for p in points]
            ax.scatter(xs, [p["speedup"] for p in points], s=22, color=colors[method], alpha=0.85,
                       zorder=3, label=method)
            flops = [(p["sparsity"], p["flop_limit"]) for p in points if p.get("flop_limit")]
            if show_flop_limit and flops:
                fx, fy = zip(*flops, strict=True)
                ax.scatter(fx, fy, s=40, facecolors="none", edgecolors=colors[method], linewidths=1.0,
                           alpha=0.7, zorder=2)
        if show_flop_limit and any(p.get("flop_limit") for p in all_points):
            ax.scatter([], [], s=40, facecolors="none", edgecolors="0.3", label="FLOP limit (hollow)")
        values = [p["speedup"] for p in all_points] + [p["flop_limit"] for p in all_points
                                                       if show_flop_limit and p.get("flop_limit")]
        ax.set_yscale("log")
        ax.set_ylim(min(min(values), 1.0) / 1.25, max(max(values), 1.0 / (1.0 - s[-1])) * 1.25)
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlim(-0.02, s[-1] + 0.02)
    else:
        _empty(ax, "no device records")
    ax.set_title("Measured speedup versus sparsity (all runs pooled per method)")
    ax.set_xlabel("sparsity of the personal model (fraction of weights pruned)")
    ax.set_ylabel("speedup, dense latency / personal latency (×, log scale)")
    ax.grid(alpha=0.3, which="both")
    _legend(ax, loc="upper left")
    return _save(fig, path)


FIGURES = (
    # file name, function
    ("accuracy_vs_round.png", plot_accuracy_vs_round),
    ("accuracy_vs_mb.png", plot_accuracy_vs_mb),
    ("accuracy_distribution.png", plot_accuracy_distribution),
    ("mask_diagnostics.png", plot_mask_diagnostics),
    ("speedup_vs_sparsity.png", plot_speedup_vs_sparsity),
)

