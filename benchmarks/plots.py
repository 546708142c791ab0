"""Every benchmark plot, drawn one way: the quality grids, the throughput benchmark and the data path.

A figure is built from the JSON its benchmark wrote and nothing else, so any plot can be redrawn without
re-running the benchmark::

    python -m benchmarks.plots --all                                   # every committed result
    python -m benchmarks.plots benchmarks/results/quality/cvr.json     # one result; PNGs go beside it

Conventions, the same in every figure:

* AUC axes run from 0.5 (random ranking) to 1.0 (perfect ranking), so bar lengths compare honestly; the small
  gaps between models are read from the value printed on every bar (mean ± std over seeds), not from a cropped
  axis. Ratio axes start at 0; rate axes are logarithmic and say so.
* Whiskers are ±1 std over seeds (quality) or min-max over timing rounds (throughput, data path).
* Dashed lines are reference values named in the legend: the oracle's AUC (the synthetic world's true
  probabilities), the throughput targets.
* Legends sit below the axes and explain every term; titles wrap to the figure's width.

:func:`layout_problems` lists what a person would see as broken: a text outside the figure, overlapping tick
labels or value labels, a legend over the bars. :func:`save` logs them; ``tests/test_plots.py`` asserts there are
none for every committed result.
"""

import argparse
import glob
import importlib
import json
import logging
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn (it is a dev extra)
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.transforms import Bbox

log = logging.getLogger("benchmarks.plots")

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
DPI = 110
BAR = "#4c72b0"
REFERENCE = "#c44e52"
MUTED = "#7f7f7f"
AUC_RANGE = (0.5, 1.0)
TITLE_SIZE = 12
VALUE_SIZE = 8

DATASET_LABELS = {
    "synthetic": "synthetic world (500k impressions)",
    "synthetic-2m": "synthetic world, 2M impressions",
    "synthetic-slopes": "synthetic world with per-user slopes",
    "movielens": "MovieLens-100K",
    "quick": "tiny world (smoke test)",
}

# the throughput benchmark's paths (benchmarks/throughput.py, docs/benchmarks.md) in words
PATH_COLORS = {
    "recsys": "#4c72b0",
    "sparse": "#dd8452",
    "dense": "#c44e52",
    "tbe_mlp": "#55a868",
    "recsys_unchecked": "#64b5cd",
    "tbe": "#8c8c8c",
    "mlp": "#8172b3",
    "plain": "#dd8452",
}  # the data-path figures' replaced implementation
PATH_LEGEND = {
    "recsys": "recsys: the library's training step (DMP, fused FBGEMM TBE, fused row-wise Adagrad)",
    "sparse": "sparse PyTorch (headline peer): nn.EmbeddingBag(sparse=True) per table, sparse Adagrad, Adam",
    "dense": "dense PyTorch (common CTR libraries): nn.Embedding per table, dense gradients, Adam on every row",
    "tbe_mlp": "TBE + MLP: the same tables in bare FBGEMM kernels in one module, same MLP, no torchrec",
    "recsys_unchecked": "recsys without FBGEMM's bounds check (sharding.bounds_check=none)",
    "tbe": "TBE: the bare FBGEMM embedding kernels alone (lookups + fused update)",
    "mlp": "MLP: the model's dense layers alone (lookups replaced by fixed vectors)",
}


@dataclass(frozen=True)
class Metric:
    """An AUC a quality plot shows.

    Args:
        key: the report key, e.g. ``cvr/ctcvr_auc``.
        label: what the panel calls it, e.g. "CTCVR AUC (all impressions)".
        oracle: the report key of the oracle's AUC for the same target (synthetic data), if there is one.
    """

    key: str
    label: str
    oracle: Optional[str] = None


@dataclass(frozen=True)
class Panel:
    """One panel of a quality figure: a metric on one dataset profile, one bar per experiment."""

    dataset: str
    metric: Metric


# --- drawing helpers ------------------------------------------------------------------------------------------


def _figure(width: float, height: float) -> "Figure":
    """A figure on the Agg canvas (no pyplot state, no display) with constrained layout."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _wrap(fig: "Figure", text: str, size: float) -> str:
    """``text`` broken at spaces into lines that each fit the figure's width (measured with its renderer)."""
    from matplotlib.font_manager import FontProperties

    renderer = fig.canvas.get_renderer()
    props = FontProperties(size=size)
    room = (fig.get_figwidth() - 0.3) * fig.dpi

    def width(line: str) -> float:
        return renderer.get_text_width_height_descent(line, props, ismath=False)[0]

    lines: List[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            trial = f"{line} {word}" if line else word
            if line and width(trial) > room:
                lines.append(line)
                line = word
            else:
                line = trial
        lines.append(line)
    return "\n".join(lines)


def _title(fig: "Figure", title: str, subtitle: str = "") -> None:
    """The figure's title (and a second, smaller-print line of context), wrapped to the figure's width."""
    text = _wrap(fig, title, TITLE_SIZE) + ("\n" + _wrap(fig, subtitle, TITLE_SIZE) if subtitle else "")
    fig.suptitle(text, fontsize=TITLE_SIZE)


def _legend(fig: "Figure", handles: List[Any], labels: List[str], ncols: int = 1, title: Optional[str] = None) -> None:
    """The figure's legend, below every axes (constrained layout makes room), never over data."""
    fig.legend(
        handles,
        labels,
        loc="outside lower center",
        ncols=ncols,
        fontsize=8.5,
        frameon=False,
        title=title,
        title_fontsize=8.5,
    )


def _bar_handle(color: str) -> Any:
    from matplotlib.patches import Patch

    return Patch(facecolor=color)


def _line_handle(color: str, style: str = "--") -> Any:
    from matplotlib.lines import Line2D

    return Line2D([], [], color=color, linestyle=style, linewidth=1.3)


# a value printed beside a bar sits on a white ground, so that a reference line behind it does not cut the digits
ON_WHITE = {"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 0.5}


def compact(x: float) -> str:
    """A rate in 3 significant digits with k / M suffix: 37262 -> '37.3k', 622944 -> '623k'."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{suffix}"
    return f"{x:.3g}"


def _errs(stats: Sequence[Optional[Dict[str, float]]]) -> np.ndarray:
    """[2, N] whisker lengths (median - min, max - median) of timing statistics; 0 where missing."""
    return np.array(
        [[s["median"] - s["min"] if s else 0.0 for s in stats], [s["max"] - s["median"] if s else 0.0 for s in stats]]
    )


# --- quality grids --------------------------------------------------------------------------------------------


def quality_figure(result: Dict[str, Any], panels: Sequence[Panel], budget: str = "") -> "Figure":
    """Horizontal bars: one row per experiment, one panel per (dataset, AUC); axes from 0.5 to 1.0, mean ± std
    printed on every bar, ±1 std whiskers, the oracle's AUC as a dashed line.

    Args:
        result: a quality grid's JSON (``title``, ``seeds``, ``epochs``, ``results``).
        panels: what to show (:func:`benchmarks.quality.plot_panels` chooses them for a grid).
        budget: the training budget in words, e.g. "at most 5 epochs" (:func:`benchmarks.quality.epoch_budget`).
    """
    from matplotlib.ticker import MultipleLocator

    results: Dict[str, Dict[str, Any]] = result["results"]
    names = list(results)
    rows = np.arange(len(names))
    datasets = list(dict.fromkeys(p.dataset for p in panels))
    fig = _figure(max(8.5, 2.8 + 3.4 * len(panels)), 2.3 + 0.36 * len(names))
    axes = fig.subplots(1, max(len(panels), 1), sharey=True, squeeze=False)[0]
    values: List[Tuple["Axes", List[Any]]] = []
    any_oracle = False
    for ax, panel in zip(axes, panels):
        cells = [results[n].get(panel.dataset, {}).get("metrics", {}) for n in names]
        stats = [c.get(panel.metric.key) for c in cells]
        ran = np.array([s is not None and s["mean"] == s["mean"] for s in stats])
        mean = np.array([s["mean"] if ok else np.nan for s, ok in zip(stats, ran)])
        std = np.array([s["std"] if ok else 0.0 for s, ok in zip(stats, ran)])
        lo = AUC_RANGE[0]
        ax.barh(
            rows[ran],
            mean[ran] - lo,
            left=lo,
            xerr=std[ran],
            height=0.7,
            color=BAR,
            error_kw={"ecolor": "black", "capsize": 2, "linewidth": 1},
        )
        labels = [
            ax.text(lo + 0.006, r, f"{m:.4f} ± {s:.4f}", va="center", ha="left", color="white", fontsize=VALUE_SIZE)
            for r, m, s in zip(rows[ran], mean[ran], std[ran])
        ]
        values.append((ax, list(zip(labels, zip(mean[ran], std[ran])))))
        for r in rows[~ran]:
            ax.text(
                lo + 0.006,
                r,
                "not run on this dataset",
                va="center",
                ha="left",
                color=MUTED,
                fontsize=VALUE_SIZE,
                style="italic",
            )
        title = (
            panel.metric.label
            if len(datasets) == 1
            else f"{DATASET_LABELS.get(panel.dataset, panel.dataset)}\n{panel.metric.label}"
        )
        oracle = _oracle(cells, panel.metric.oracle)
        if oracle is not None:
            any_oracle = True
            if np.ptp(oracle) < 5e-5:  # one test set: the same oracle AUC to the printed digits
                ax.axvline(oracle[0], color=REFERENCE, linestyle="--", linewidth=1.3)
                title += f" (oracle {oracle[0]:.4f})"
            else:  # a different test set per row: one mark per row
                ax.vlines(oracle, rows - 0.45, rows + 0.45, color=REFERENCE, linestyle="--", linewidth=1.3)
        ax.set_title(title, fontsize=10)
        ax.set_xlim(*AUC_RANGE)
        ax.xaxis.set_major_locator(MultipleLocator(0.1))
        ax.xaxis.set_minor_locator(MultipleLocator(0.05))
        ax.grid(axis="x", which="both", color="#dddddd", linewidth=0.6)
        ax.set_axisbelow(True)
        ax.set_xlabel("test AUC (axis from 0.5 = random ranking)")
    axes[0].set_yticks(rows, names)
    axes[0].set_ylim(len(names) - 0.5, -0.5)  # first experiment on top
    seeds = result.get("seeds")
    where = DATASET_LABELS.get(datasets[0], datasets[0]) + "; " if len(datasets) == 1 else ""
    _title(
        fig,
        result.get("title", result.get("grid", "")),
        f"{where}{seeds} seeds, {budget + ' ' if budget else ''}with early stopping",
    )
    handles, texts = [_bar_handle(BAR)], [f"test AUC: mean ± std over {seeds} seeds (whiskers ±1 std)"]
    if any_oracle:
        handles.append(_line_handle(REFERENCE))
        texts.append("oracle: AUC of the synthetic world's true probabilities (the ceiling)")
    _legend(fig, handles, texts, ncols=len(handles) if fig.get_figwidth() > 9 else 1)
    _fit_value_labels(fig, values)
    return fig


def _oracle(cells: List[Dict[str, Any]], key: Optional[str]) -> Optional[np.ndarray]:
    """The oracle's AUC per row where every row that ran has it, else None."""
    if key is None:
        return None
    got = [c[key]["mean"] for c in cells if c and key in c and c[key]["mean"] == c[key]["mean"]]
    ran = [c for c in cells if c]
    if not got or len(got) != len(ran):
        return None
    return np.array([c[key]["mean"] if c else np.nan for c in cells])


def _fit_value_labels(fig: "Figure", values: List[Tuple["Axes", List[Any]]]) -> None:
    """A value label stays inside its bar when it ends left of the whisker; otherwise it moves right of the
    whisker (on a white ground)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax, labels in values:
        for label, (mean, std) in labels:
            whisker_start = ax.transData.transform((mean - std, 0))[0]
            if label.get_window_extent(renderer).x1 > whisker_start - 3:
                label.set_x(mean + std + 0.006)
                label.set_color("black")
                label.set_bbox(ON_WHITE)


# --- throughput -----------------------------------------------------------------------------------------------


def throughput_figures(result: Dict[str, Any]) -> Dict[str, "Figure"]:
    """The throughput benchmark's figures by name: ``batch`` (samples/s of every path over batch sizes),
    ``ratio`` (recsys / sparse PyTorch and recsys / one-module TBE + MLP per cell, goals marked), ``models``
    (recsys and the PyTorch paths per model on the live world). A figure whose cells are absent is left out."""
    figures = {"batch": _batch_figure(result), "ratio": _ratio_figure(result), "models": _models_figure(result)}
    return {name: fig for name, fig in figures.items() if fig is not None}


def _machine(env: Dict[str, Any]) -> str:
    threads = env.get("threads")
    return f"{env.get('cpu')}, {env.get('cpu_count')} cores, {threads} torch thread{'' if threads == 1 else 's'}"


def _where(result: Dict[str, Any]) -> str:
    env, settings = result["environment"], result["settings"]
    device = env["gpu"] if settings["device"] == "cuda" and env.get("gpu") else _machine(env)
    return f"{device}; {settings['repeats']} interleaved rounds per path"


def _batch_figure(result: Dict[str, Any]) -> Optional["Figure"]:
    sweep = [c for c in result["cells"] if c["tag"] == "batch" and "train" in c]
    if not sweep:
        return None
    models = list(dict.fromkeys(c["model"] for c in sweep))
    fig = _figure(max(6.4 * len(models), 8.6), 6.2)  # room for the legend's path descriptions
    axes = fig.subplots(1, len(models), squeeze=False)[0]
    series: List[str] = []
    for ax, model in zip(axes, models):
        cells = [c for c in sweep if c["model"] == model]
        x = np.arange(len(cells))
        shown = [p for p in result["settings"]["paths"] if any(p in c["train"] for c in cells)]
        series += [p for p in shown if p not in series]
        width = 0.8 / len(shown)
        top = 0.0
        for j, path in enumerate(shown):
            stats = [c["train"].get(path) for c in cells]
            med = np.array([s["median"] if s else np.nan for s in stats])
            at = x + (j - (len(shown) - 1) / 2) * width
            ax.bar(at, med, width, yerr=_errs(stats), color=PATH_COLORS[path], capsize=2, error_kw={"linewidth": 1})
            for xi, s in zip(at, stats):
                if s:
                    ax.text(
                        xi,
                        s["max"] * 1.15,
                        compact(s["median"]),
                        rotation=90,
                        ha="center",
                        va="bottom",
                        fontsize=7,
                        bbox=ON_WHITE,
                    )
                    top = max(top, s["max"])
        ax.set_yscale("log")
        ax.set_ylim(top=top * 8)
        ax.set_xticks(x, [f"{c['batch_size']:,}" for c in cells])
        ax.set_xlabel("batch size")
        ax.set_ylabel("training samples/s (log scale)")
        ax.set_title(f"{model} on {cells[0]['workload']}", fontsize=10)
    _title(fig, "Training throughput of every path over batch sizes", f"{sweep[0]['description']}; {_where(result)}")
    _legend(
        fig,
        [_bar_handle(PATH_COLORS[p]) for p in series],
        [PATH_LEGEND[p] for p in series],
        ncols=2 if len(models) > 1 else 1,
        title="bar: median samples/s, whiskers min-max over rounds, value printed above",
    )
    return fig


def _cell_label(c: Dict[str, Any]) -> str:
    cap = f", tables <= {c['vocab_cap']:,} rows" if c["tag"] == "vocab" else ""
    return f"{c['workload']} · {c['model']} · B={c['batch_size']:,}{cap}"


def _goal_targets(settings: Dict[str, Any], key: str) -> List[Tuple[int, float]]:
    """(batch size, target) of every goal on ``key`` (issue 20's goals, recorded with the result)."""
    return [(g["batch_size"], g["target"]) for g in settings.get("goals", []) if g["key"] == key]


def _ratio_figure(result: Dict[str, Any]) -> Optional["Figure"]:
    rated = [c for c in result["cells"] if c.get("ratios")]
    if not rated:
        return None
    settings = result["settings"]
    fig = _figure(14.5, 2.8 + 0.27 * len(rated))
    axes = fig.subplots(1, 2, sharey=True)
    rows = np.arange(len(rated))
    panels = (
        ("recsys_over_sparse_train", "recsys ÷ sparse PyTorch", "recsys samples/s ÷ sparse PyTorch samples/s"),
        ("recsys_over_tbe_mlp_train", "recsys ÷ one-module TBE + MLP", "recsys samples/s ÷ TBE + MLP samples/s"),
    )
    goal_text = []
    for ax, (key, title, xlabel) in zip(axes, panels):
        stats = [c["ratios"].get(key) for c in rated]
        med = np.array([s["median"] if s else np.nan for s in stats])
        ax.barh(rows, med, height=0.7, xerr=_errs(stats), color=BAR, capsize=2, error_kw={"linewidth": 1})
        ends = [s["max"] if s else 0.0 for s in stats]
        for r, s, end in zip(rows, stats, ends):
            if s:
                ax.text(end, r, f" {s['median']:.2f}×", va="center", ha="left", fontsize=7.5, bbox=ON_WHITE)
        targets = _goal_targets(settings, key)
        for target in sorted({t for _, t in targets}):
            ax.axvline(target, color=REFERENCE, linestyle="--", linewidth=1.3)
        goal_text += [f"{title} >= {t:g}× at batch {b}" for b, t in targets]
        ax.axvline(1.0, color=MUTED, linewidth=0.8)
        ax.set_xlim(0, max(ends + [t for _, t in targets] + [1.0]) * 1.15)
        ax.set_title(f"training, {title}", fontsize=10)
        ax.set_xlabel(xlabel + " (axis from 0)")
    axes[0].set_yticks(rows, [_cell_label(c) for c in rated])
    axes[0].tick_params(axis="y", labelsize=8)
    axes[0].set_ylim(len(rated) - 0.5, -0.5)
    _title(
        fig,
        "Training speed of recsys relative to sparse plain PyTorch and to the same model on bare FBGEMM "
        "kernels, per cell",
        _where(result),
    )
    _legend(
        fig,
        [_bar_handle(BAR), _line_handle(REFERENCE), _line_handle(MUTED, "-")],
        [
            "median of the per-round (paired) ratios, whiskers min-max, value printed",
            "goals on the Criteo-like one-hot cells: " + "; ".join(goal_text),
            "1×: as fast as the other path",
        ],
        ncols=1,
    )
    return fig


def _models_figure(result: Dict[str, Any]) -> Optional["Figure"]:
    from matplotlib.ticker import FuncFormatter

    cells = [c for c in result["cells"] if c["tag"] == "models" and "train" in c]
    if not cells:
        return None
    paths = [p for p in ("recsys", "sparse", "dense", "tbe_mlp") if any(p in c["train"] for c in cells)]
    fig = _figure(10.5, 2.4 + 0.45 * len(cells))
    ax = fig.subplots()
    rows = np.arange(len(cells))
    height = 0.8 / len(paths)
    for j, path in enumerate(paths):
        stats = [c["train"].get(path) for c in cells]
        med = np.array([s["median"] if s else np.nan for s in stats])
        at = rows + (j - (len(paths) - 1) / 2) * height
        ax.barh(at, med, height, xerr=_errs(stats), color=PATH_COLORS[path], capsize=2, error_kw={"linewidth": 1})
        for y, s in zip(at, stats):
            if s:
                ax.text(s["max"], y, " " + compact(s["median"]), va="center", ha="left", fontsize=7.5, bbox=ON_WHITE)
    ratios = [c.get("ratios", {}).get("recsys_over_sparse_train") for c in cells]
    labels = [c["model"] + (f"  ({r['median']:.2f}×)" if r else "") for c, r in zip(cells, ratios)]
    ax.set_yticks(rows, labels)
    ax.set_ylim(len(cells) - 0.5, -0.5)
    top = max(c["train"][p]["max"] for c in cells for p in paths if c["train"].get(p))
    ax.set_xlim(0, top * 1.15)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: compact(x) if x else "0"))
    ax.set_xlabel(
        "training samples/s (axis from 0); in brackets: recsys ÷ sparse PyTorch, median of the per-round ratios"
    )
    batches = sorted({c["batch_size"] for c in cells})
    _title(fig, f"Registered models on the live-streaming world, batch {', '.join(map(str, batches))}", _where(result))
    _legend(
        fig,
        [_bar_handle(PATH_COLORS[p]) for p in paths],
        [PATH_LEGEND[p] for p in paths],
        ncols=1,
        title="bar: median samples/s, whiskers min-max over rounds, value printed",
    )
    return fig


# the parts of one recsys forward (benchmarks/overhead.py), stacked in this order
OVERHEAD_PARTS = (
    ("kernel without its bounds check", "#55a868"),
    ("FBGEMM bounds check", "#64b5cd"),
    ("torchrec lookup wrapper (lookup - kernel)", "#8172b3"),
    ("input dist (one rank)", "#dd8452"),
    ("output dist + KeyedTensor (one rank)", "#c44e52"),
    ("dense part, loss and the rest (model - dists - lookup)", BAR),
)


def overhead_figure(result: Dict[str, Any]) -> "Figure":
    """CPU ms of one recsys forward per batch size, stacked by stage (benchmarks/overhead.py)."""
    cells = result["batches"]
    fig = _figure(10.5, 2.6 + 0.5 * len(cells))
    ax = fig.subplots()
    rows = np.arange(len(cells))
    left = np.zeros(len(cells))
    for part, (_, color) in enumerate(OVERHEAD_PARTS):
        vals = []
        for c in cells:
            ms = c["ms"]
            vals.append(
                [
                    ms["kernel"] - ms["bounds_check"],
                    ms["bounds_check"],
                    ms["lookup"] - ms["kernel"],
                    ms["input_dist"],
                    ms["output_dist"],
                    ms["model"] - ms["input_dist"] - ms["lookup"] - ms["output_dist"],
                ][part]
            )
        ax.barh(rows, vals, left=left, height=0.6, color=color)
        left += np.asarray(vals)
    for r, total in zip(rows, left):
        ax.text(total, r, f" {total:.2f} ms", va="center", ha="left", fontsize=8, bbox=ON_WHITE)
    ax.set_yticks(rows, [f"batch {c['batch_size']:,}" for c in cells])
    ax.set_ylim(len(cells) - 0.5, -0.5)
    ax.set_xlim(0, float(left.max()) * 1.18)
    ax.set_xlabel("CPU ms per forward (no_grad), median over interleaved rounds (axis from 0)")
    s = result["settings"]
    _title(
        fig,
        "Where one recsys forward goes at world size 1, by stage",
        f"{s['model']} on the Criteo-like one-hot workload, tables <= {s['vocab_cap']:,} rows; "
        f"{_machine(result['environment'])}",
    )
    _legend(fig, [_bar_handle(c) for _, c in OVERHEAD_PARTS], [label for label, _ in OVERHEAD_PARTS], ncols=2)
    return fig


# --- data path ------------------------------------------------------------------------------------------------


def loader_figure(result: Dict[str, Any]) -> "Figure":
    """Rows/s of every data-path stage against the training step rate (log axis), the 10x target marked."""
    from benchmarks.loader import STAGES

    stages = [(STAGES.get(k, k), v) for k, v in result["rows_per_sec"].items()]
    train = result["train_samples_per_sec"]
    names = [n for n, _ in stages] + [
        "train: Wide&Deep steps, batches in memory",
        "train: Wide&Deep steps, streaming from Parquet",
    ]
    med = [s["median"] for _, s in stages] + [train["from_memory"], train["from_parquet"]]
    stats: List[Optional[Dict[str, float]]] = [s for _, s in stages] + [None, None]
    fig = _figure(10, 2.6 + 0.45 * len(names))
    ax = fig.subplots()
    rows = np.arange(len(names))
    colors = [BAR] * len(stages) + [PATH_COLORS["plain"]] * 2
    ax.barh(rows, med, height=0.7, xerr=_errs(stats), color=colors, capsize=2, error_kw={"linewidth": 1})
    for r, m, s in zip(rows, med, stats):
        ax.text(s["max"] if s else m, r, f" {compact(m)}/s", va="center", ha="left", fontsize=VALUE_SIZE, bbox=ON_WHITE)
    target = 10 * train["from_memory"]
    _log_bars_axis(
        ax,
        names,
        target,
        (min(med) / 2, max(s["max"] if s else m for m, s in zip(med, stats)) * 4),
        "rows/s (log scale)",
    )
    _title(
        fig,
        "Data path throughput against the training step rate",
        f"synthetic world, {result['rows']:,} rows, batch {result['batch_size']:,}; {_machine(result['environment'])}",
    )
    _legend(
        fig,
        [_bar_handle(BAR), _bar_handle(PATH_COLORS["plain"]), _line_handle(REFERENCE)],
        [
            "loader stage: median rows/s, whiskers min-max over repeats",
            "training: samples/s of Wide&Deep steps",
            f"target: 10x the in-memory training step rate ({compact(target)} rows/s), so the loader is never "
            "the bottleneck",
        ],
        ncols=1,
    )
    return fig


def evaluation_figure(result: Dict[str, Any]) -> "Figure":
    """Rows evaluated per CPU-second at each size: this implementation beside the baseline it was measured
    against (log axis), the 10^6 rows per CPU-second goal marked."""
    baseline = result.get("baseline") or {}
    names, med, stats, colors = [], [], [], []
    for rows, cell in result["current"].items():
        names.append(f"recsys evaluate(), {int(rows):,} rows")
        med.append(cell["rows_per_cpu_s"]["median"])
        stats.append(cell["rows_per_cpu_s"])
        colors.append(BAR)
    for rows, cell in baseline.items():
        if isinstance(cell, dict) and "rows_per_cpu_s" in cell:
            names.append(f"before (commit {baseline['ref']}), {int(rows):,} rows")
            med.append(cell["rows_per_cpu_s"]["median"])
            stats.append(cell["rows_per_cpu_s"])
            colors.append(PATH_COLORS["plain"])
    fig = _figure(10, 2.6 + 0.45 * len(names))
    ax = fig.subplots()
    ys = np.arange(len(names))
    ax.barh(ys, med, height=0.7, xerr=_errs(stats), color=colors, capsize=2, error_kw={"linewidth": 1})
    for y, m, st in zip(ys, med, stats):
        ax.text(st["max"], y, f" {compact(m)} rows/CPU-s", va="center", ha="left", fontsize=VALUE_SIZE, bbox=ON_WHITE)
    goal = 1e6
    _log_bars_axis(
        ax,
        names,
        goal,
        (min(med) / 2, max(max(st["max"] for st in stats), goal) * 6),
        "rows evaluated per CPU-second (log scale)",
    )
    work = result["workload"]
    _title(
        fig,
        "Evaluation throughput: AUC, logloss, GAUC, NDCG@k per task, scenario and stage",
        f"{len(work['tasks'])} tasks, {work['scenarios']} scenarios x {len(work['stages'])} stages, "
        f"{work['users']:,} users; {_machine(result['environment'])}",
    )
    _legend(
        fig,
        [_bar_handle(BAR), _bar_handle(PATH_COLORS["plain"]), _line_handle(REFERENCE)],
        [
            "this implementation: median over rounds, whiskers min-max",
            "the implementation it replaced",
            "goal: 1M rows per CPU-second",
        ],
        ncols=1,
    )
    return fig


# --- layout checks --------------------------------------------------------------------------------------------


def _inside(box: "Bbox", outer: "Bbox", slack: float = 1.0) -> bool:
    return (
        box.x0 >= outer.x0 - slack
        and box.y0 >= outer.y0 - slack
        and box.x1 <= outer.x1 + slack
        and box.y1 <= outer.y1 + slack
    )


def _overlap(a: "Bbox", b: "Bbox", slack: float = 0.5) -> bool:
    return a.x0 < b.x1 - slack and b.x0 < a.x1 - slack and a.y0 < b.y1 - slack and b.y0 < a.y1 - slack


def _shown_tick_labels(axis: Any) -> List[Any]:
    """The tick labels an axis draws: visible, non-empty, at a tick inside the view interval."""
    lo, hi = sorted(axis.get_view_interval())
    eps = (hi - lo) * 1e-9
    shown = []
    for ticks, locs in (
        (axis.get_major_ticks(), axis.get_majorticklocs()),
        (axis.get_minor_ticks(), axis.get_minorticklocs()),
    ):
        for tick, loc in zip(ticks, locs):
            for label in (tick.label1, tick.label2):
                if label.get_visible() and label.get_text().strip() and lo - eps <= loc <= hi + eps:
                    shown.append(label)
    return shown


def _pairwise_overlaps(texts: Sequence[Any], renderer: Any, what: str) -> List[str]:
    boxes = [(t, t.get_window_extent(renderer)) for t in texts]
    problems = []
    for i, (a, box_a) in enumerate(boxes):
        for b, box_b in boxes[i + 1 :]:
            if _overlap(box_a, box_b):
                problems.append(f"{what} overlap: {a.get_text()!r} and {b.get_text()!r}")
    return problems


def layout_problems(fig: "Figure") -> List[str]:
    """What a person would see as broken in ``fig``, one line each (empty when the figure is clean).

    Checked after drawing with the figure's own layout: every text (titles, axis labels, tick labels, legend
    entries, value labels) lies inside the figure; no two tick labels of an axis overlap; no two texts inside
    one axes overlap; every legend lies inside the figure and covers no bar.
    """
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    outer = fig.bbox
    problems: List[str] = []
    tick_texts = set()
    for ax in fig.axes:
        for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                tick_texts.update((id(tick.label1), id(tick.label2)))
            shown = _shown_tick_labels(axis)
            problems += _pairwise_overlaps(shown, renderer, f"{name} tick labels")
            problems += [
                f"{name} tick label {t.get_text()!r} lies outside the figure"
                for t in shown
                if not _inside(t.get_window_extent(renderer), outer)
            ]
        problems += _pairwise_overlaps(
            [t for t in ax.texts if t.get_visible() and t.get_text().strip()], renderer, "texts in one axes"
        )
    for text in fig.findobj(Text):
        if id(text) in tick_texts or not text.get_visible() or not text.get_text().strip():
            continue
        if not _inside(text.get_window_extent(renderer), outer):
            problems.append(f"text {text.get_text()[:60]!r} lies outside the figure")
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    # a bar is drawn clipped to its axes (on a log axis its base lies at -inf)
    bars = [Bbox.intersection(p.get_window_extent(renderer), ax.bbox) for ax in fig.axes for p in ax.patches]
    bars = [b for b in bars if b is not None]
    for legend in legends:
        box = legend.get_window_extent(renderer)
        if not _inside(box, outer):
            problems.append("a legend lies outside the figure")
        if any(_overlap(box, bar) for bar in bars):
            problems.append("a legend covers bars")
    return problems


def _log_bars_axis(ax: Any, names: Sequence[str], reference: float, xlim: Tuple[float, float], xlabel: str) -> None:
    """The value axis of a horizontal bar chart on a log scale: one bar per name, the first on top, and a dashed
    reference line (a goal, a tolerance)."""
    ax.axvline(reference, color=REFERENCE, linestyle="--", linewidth=1.3)
    ax.set_xscale("log")
    ax.set_xlim(*xlim)
    ax.set_yticks(np.arange(len(names)), names)
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.set_xlabel(xlabel)


def save(fig: "Figure", path: str) -> List[str]:
    """Write ``fig`` as PNG (the layout that was checked is the layout saved); returns its layout problems,
    each also logged as a warning."""
    problems = layout_problems(fig)
    for problem in problems:
        log.warning("%s: %s", path, problem)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return problems


# --- re-rendering committed results ---------------------------------------------------------------------------


def scale_figure(result: Dict[str, Any]) -> "Figure":
    """End to end over the loop's samples/s and peak RSS per world size and data mode (benchmarks/scale.py),
    the 0.75x goal marked."""
    names, ratios, rss, colors = [], [], [], []
    for size in result["sizes"]:
        for cell in size["cells"]:
            limited = f", {cell['steps']} steps" if size.get("max_steps") else ""
            names.append(f"{int(size['rows']):,} rows, {cell['mode']}{limited}")
            ratios.append(cell["end_to_end_ratio"])
            rss.append(cell["peak_rss_bytes"] / 2**30)
            colors.append(BAR if cell["mode"] == "stream" else PATH_COLORS["plain"])
    fig = _figure(12, 2.4 + 0.45 * len(names))
    left, right = fig.subplots(1, 2, sharey=True)
    ys = np.arange(len(names))
    for ax, values, fmt in ((left, ratios, "{:.2f}x"), (right, rss, "{:.2f} GiB")):
        ax.barh(ys, values, height=0.7, color=colors)
        for y, v in zip(ys, values):
            ax.text(v, y, " " + fmt.format(v), va="center", ha="left", fontsize=VALUE_SIZE, bbox=ON_WHITE)
        ax.set_xlim(0, max(values) * 1.35)
    left.axvline(0.75, color=REFERENCE, linestyle="--", linewidth=1.3)
    left.set_yticks(ys, names)
    left.set_ylim(len(names) - 0.5, -0.5)
    left.set_xlabel("end-to-end samples/s / the training loop's samples/s (axis from 0)")
    right.set_xlabel("peak RSS of the run (GiB, axis from 0)")
    _title(
        fig,
        "recsys train end to end: share of the loop's rate and peak memory by world size",
        f"Wide&Deep, synthetic world, batch {result['batch_size']:,}; {_machine(result['environment'])}",
    )
    _legend(
        fig,
        [_bar_handle(BAR), _bar_handle(PATH_COLORS["plain"]), _line_handle(REFERENCE)],
        ["streaming (data.in_memory=false)", "in memory", "goal: end to end >= 0.75x of the loop (at 10^7 rows)"],
    )
    return fig


def reproduce_figure(result: Dict[str, Any]) -> "Figure":
    """The largest difference between a rerun quality cell's test metrics and the committed ones (log axis)."""
    cells = {k: c for k, c in result["cells"].items() if "max_abs_diff" in c}
    names = list(cells)
    diffs = [max(cells[n]["max_abs_diff"], 1e-9) for n in names]
    fig = _figure(11, 2.4 + 0.4 * len(names))
    ax = fig.subplots()
    ys = np.arange(len(names))
    ax.barh(ys, diffs, height=0.7, color=BAR)
    for y, n, d in zip(ys, names, diffs):
        where = cells[n]["largest"][0][0] if cells[n]["largest"] else ""
        ax.text(d, y, f" {d:.2g} ({where})", va="center", ha="left", fontsize=VALUE_SIZE, bbox=ON_WHITE)
    _log_bars_axis(
        ax,
        names,
        1e-4,
        (1e-9, max(diffs) * 1e4),
        "largest |now - committed| over every test metric of the cell (log scale)",
    )
    _title(
        fig,
        "Committed quality cells rerun at the same seed",
        f"seed {result['seed']}; {_machine(result['environment'])}",
    )
    _legend(
        fig,
        [_bar_handle(BAR), _line_handle(REFERENCE)],
        ["largest difference, the metric named", "1e-4: the committed tables' last printed digit"],
    )
    return fig


def figures_for(json_path: str) -> Dict[str, "Figure"]:
    """Every figure of one result file, by the PNG path it is committed under (beside the JSON)."""
    with open(json_path) as f:
        result = json.load(f)
    base = os.path.splitext(json_path)[0]
    if "cells" in result and "seed" in result:  # benchmarks/reproduce.py
        return {base + ".png": reproduce_figure(result)}
    if "sizes" in result and "runs" in result:  # benchmarks/scale.py
        return {base + ".png": scale_figure(result)}
    if "grid" in result:
        from benchmarks.quality import figure

        return {base + ".png": figure(importlib.import_module(f"benchmarks.grids.{result['grid']}"), result)}
    if result.get("benchmark") == "serving":
        from benchmarks.serving import figures

        return {f"{base}_{name}.png": fig for name, fig in figures(result).items()}  # it has "cells" too
    if "cells" in result:
        return {f"{base}_{name}.png": fig for name, fig in throughput_figures(result).items()}
    if "rows_per_sec" in result:
        return {base + ".png": loader_figure(result)}
    if "stages" in result:
        return {base + ".png": overhead_figure(result)}
    if "current" in result and "workload" in result:
        return {base + ".png": evaluation_figure(result)}
    raise ValueError(
        f"{json_path}: not a result of benchmarks.quality, throughput, overhead, loader, evaluation or serving"
    )


def committed_results(root: str = RESULTS) -> List[str]:
    """The result JSON files under ``root`` (not a grid's partial files)."""
    found = glob.glob(os.path.join(root, "*.json")) + glob.glob(os.path.join(root, "quality", "*.json"))
    return sorted(p for p in found if not p.endswith(".partial.json"))


def render(paths: Iterable[str]) -> int:
    """Redraw the figures of every result in ``paths``; returns the number of layout problems found."""
    count = 0
    for json_path in paths:
        for png, fig in figures_for(json_path).items():
            count += len(save(fig, png))
            print(png)
    return count


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.plots", description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="*", help="result JSON files (their PNGs are written beside them)")
    p.add_argument("--all", action="store_true", help=f"every result under {os.path.relpath(RESULTS)}")
    args = p.parse_args(argv)
    if not args.all and not args.results:
        p.error("name result JSON files or pass --all")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    problems = render(committed_results() if args.all else args.results)
    if problems:
        print(f"error: {problems} layout problem(s), listed above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
