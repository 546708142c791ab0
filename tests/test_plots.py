"""Benchmark plots (benchmarks/plots.py): every committed result renders into a figure whose titles, axis labels,
tick labels, value labels and legend fit inside it without overlapping; the figures show what their grid is
about, on honest axes; and the committed PNGs are the current renders of the committed JSON."""

import json
import os
import shutil
import struct

import numpy as np
import pytest

from benchmarks import plots

RESULTS = plots.committed_results()


def _png_size(path: str):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", head[16:24])


def _same_size(pixels, fig) -> bool:
    """A PNG of ``pixels`` (width, height) is ``fig`` saved at the module's DPI (Agg truncates to whole pixels)."""
    want = fig.get_size_inches() * plots.DPI
    return all(abs(got - w) < 1 for got, w in zip(pixels, want))


def _texts(fig):
    from matplotlib.text import Text

    return [t.get_text() for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


def test_every_benchmark_result_is_committed_with_its_plots():
    names = {os.path.relpath(p, plots.RESULTS) for p in RESULTS}
    assert {"loader.json", "throughput_cpu.json", "quality/cvr.json", "quality/cbmr_ctr.json"} <= names
    for path in RESULTS:
        for png in plots.figures_for(path):
            assert os.path.exists(png), png


@pytest.mark.parametrize("path", RESULTS, ids=[os.path.relpath(p, plots.RESULTS) for p in RESULTS])
def test_committed_result_renders_cleanly_and_matches_the_committed_png(path):
    for png, fig in plots.figures_for(path).items():
        assert plots.layout_problems(fig) == [], png
        assert fig.get_suptitle().strip(), png
        assert all(ax.get_xlabel().strip() for ax in fig.axes), png
        # panels share the first one's row labels (or say what the y axis is)
        first = fig.axes[0]
        assert [t for t in first.get_yticklabels() if t.get_text()] or first.get_ylabel(), png
        assert fig.legends and all(t.get_text() for t in fig.legends[0].get_texts()), png
        # the committed PNG is this render (re-rendered by `python -m benchmarks.plots --all`)
        assert _same_size(_png_size(png), fig), f"{png} is stale: re-render it"


def test_cvr_plots_show_ctr_cvr_and_ctcvr_auc_from_0_5_with_values_and_oracles():
    for grid in ("cvr", "cvr_funnel"):
        path = os.path.join(plots.RESULTS, "quality", f"{grid}.json")
        with open(path) as f:
            result = json.load(f)
        (fig,) = plots.figures_for(path).values()
        titles = [ax.get_title() for ax in fig.axes]
        assert [t.split(" (oracle")[0] for t in titles] == [
            "CTR AUC (all impressions)", "CVR AUC (clicked impressions)", "CTCVR AUC (all impressions)"]
        names = list(result["results"])
        for ax, key, oracle in zip(fig.axes, ("ctr/auc", "cvr/auc", "cvr/ctcvr_auc"),
                                   ("ctr/oracle_auc", "cvr/oracle_auc", "cvr/oracle_ctcvr_auc")):
            cells = [result["results"][n]["synthetic"]["metrics"] for n in names]
            assert ax.get_xlim() == (0.5, 1.0)  # the whole AUC range above random ranking, not a cropped one
            bars = ax.patches
            assert [b.get_x() for b in bars] == [0.5] * len(names)
            np.testing.assert_allclose([b.get_x() + b.get_width() for b in bars], [c[key]["mean"] for c in cells])
            labels = [t.get_text() for t in ax.texts]
            assert labels == [f"{c[key]['mean']:.4f} ± {c[key]['std']:.4f}" for c in cells]
            (line,) = [line for line in ax.lines if line.get_linestyle() == "--"]
            assert line.get_xdata()[0] == pytest.approx(cells[0][oracle]["mean"])
            assert f"(oracle {cells[0][oracle]['mean']:.4f})" in ax.get_title()
        assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == names


def test_grid_without_plot_metrics_shows_each_datasets_main_auc():
    path = os.path.join(plots.RESULTS, "quality", "cbmr.json")
    (fig,) = plots.figures_for(path).values()
    assert [ax.get_title() for ax in fig.axes] == ["synthetic world (500k impressions)\nCTR AUC (oracle 0.8730)",
                                                    "MovieLens-100K\nlike AUC"]
    # rows a dataset did not run are named, not left as an unexplained gap
    assert sum(t.get_text() == "not run on this dataset" for t in fig.axes[1].texts) == 4


def test_throughput_figures_explain_every_term_and_start_ratios_at_zero():
    path = os.path.join(plots.RESULTS, "throughput_cpu.json")
    with open(path) as f:
        result = json.load(f)
    figs = plots.throughput_figures(result)
    assert set(figs) == {"batch", "ratio", "models"}
    legend = " ".join(t.get_text() for t in figs["batch"].legends[0].get_texts())
    assert result["settings"]["paths"]
    for p in result["settings"]["paths"]:
        assert plots.PATH_LEGEND[p] in legend
    ratio = figs["ratio"]
    for ax in ratio.axes:
        assert ax.get_xlim()[0] == 0
    # one dashed line per distinct goal of each panel: >= 1.5x sparse PyTorch; >= 0.97x and 0.9x TBE + MLP
    targets = sorted(line.get_xdata()[0] for ax in ratio.axes for line in ax.lines if line.get_linestyle() == "--")
    goals = result["settings"]["goals"]
    assert targets == pytest.approx(sorted(g["target"] for g in goals if g["key"].endswith("_train")))
    assert targets == pytest.approx([0.9, 0.97, 1.5])
    assert any("recsys ÷ sparse PyTorch >= 1.5× at batch 4096" in t for t in _texts(ratio))
    assert figs["batch"].axes[0].get_yscale() == "log" and "log scale" in figs["batch"].axes[0].get_ylabel()


def test_layout_check_finds_clipped_titles_overlapping_ticks_and_covering_legends():
    fig = plots._figure(3, 2)
    ax = fig.subplots()
    ax.bar(range(30), np.ones(30), label="bars")
    ax.set_xticks(range(30), [f"a long tick label {i}" for i in range(30)])
    fig.suptitle("a title far too long to fit on a figure three inches wide, left unwrapped")
    ax.legend(loc="center")
    problems = plots.layout_problems(fig)
    assert any(p.startswith("text 'a title far too long") and "outside the figure" in p for p in problems)
    assert any(p.startswith("x tick labels overlap") for p in problems)
    assert "a legend covers bars" in problems
    clean = plots._figure(4, 3)
    clean.subplots().bar(range(3), [1, 2, 3])
    plots._title(clean, "a title far too long to fit on a figure four inches wide, wrapped by the module")
    assert plots.layout_problems(clean) == []


def test_cli_rerenders_a_result_beside_its_json(tmp_path):
    src = os.path.join(plots.RESULTS, "quality", "cbmr_scale.json")
    dst = tmp_path / "cbmr_scale.json"
    shutil.copy(src, dst)
    assert plots.main([str(dst)]) == 0
    (fig,) = plots.figures_for(str(dst)).values()
    assert _same_size(_png_size(str(tmp_path / "cbmr_scale.png")), fig)
    with pytest.raises(SystemExit):
        plots.main([])
