"""Serving latency and throughput: the eager model beside its exported programs, fp32 beside int8 tables.

    python -m benchmarks.serving --data data/synthetic --aoti        # the committed result (about 25 min here)
    python -m benchmarks.serving --quick --out /tmp/srv              # tiny world, checks the harness works

For each model (default Wide&Deep, DNN, CBMR, MMoE, STAR; each with its default options on the live-streaming
world, trained with the base config ``configs/wide_deep_synthetic.yaml`` for ``--epochs`` epochs with early
stopping, or reused from ``--runs/<model>`` when that run finished) the benchmark exports the fp32 and int8
TorchScript artifacts (``--aoti``: also the fp32 AOTInductor one) and times, on the test split's rows:

    eager-fp32   ServingModule over load_for_inference(run): the trained model in Python, its tables in
                 torchrec's EmbeddingBagCollection (what a Python server would run without exporting)
    eager-int8   the same with the tables in torchrec's int8 inference module
    script-fp32  the fp32 artifact's TorchScript program (tables in FBGEMM's inference kernel, fp32 weights)
    script-int8  the int8 artifact's TorchScript program
    aoti-fp32    the AOTInductor package (--aoti)

at batch sizes 1, 16, 256 and 4096 (the first B preprocessed test rows), with one intra-op thread (one serving
worker per core). Every cell runs ``--warmup`` calls, then calls for at least ``--min-time`` seconds and
``--min-calls`` calls per round, in ``--rounds`` interleaved rounds (round r visits every cell, the order rotated
by r, so a slow spell of the shared machine hits every cell alike). Reported per cell: latency p50/p99 of every
call of every round (wall clock), rows per wall-second and rows per CPU-second (``time.process_time``; less
sensitive to other load on the machine) as the median over rounds, with min and max. Speed-ups are medians of
per-round ratios (paired: contention cancels).

Preprocessing (raw feature values -> tensors, the artifact's runtime.py) is timed the same way, separately.
Sizes: the program file, the artifact, and the table bytes inside the program. AUC: CTR and CVR (CTCVR over all
impressions) AUC of each artifact on the raw test rows, beside ``recsys predict``'s.

Goals (issue 19): exported >= 2x eager throughput at batch <= 16; int8 artifact <= 0.35x the fp32 size with AUC
within 0.002; p99 at batch 256 stated.
"""

import argparse
import copy
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from benchmarks.common import RESULTS, environment, environment_markdown, write_json, write_text
from recsys.cli import main as recsys_main
from recsys.config import load_config
from recsys.console import setup_logging
from recsys.serving import runtime
from recsys.serving.export import export_run, inference_tables
from recsys.serving.loading import load_for_inference
from recsys.serving.module import ServingModule
from recsys.train.metrics import auc

log = logging.getLogger("benchmarks.serving")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ("wide_deep", "dnn", "cbmr", "mmoe", "star")
BATCHES = (1, 16, 256, 4096)
VARIANTS = ("eager-fp32", "eager-int8", "script-fp32", "script-int8", "aoti-fp32")
VARIANT_LEGEND = {
    "eager-fp32": "eager fp32: the trained model in Python (torchrec EmbeddingBagCollection, one lookup per table)",
    "eager-int8": "eager int8: the same in Python, tables in torchrec's int8 inference module",
    "script-fp32": "TorchScript fp32: the default artifact (FBGEMM inference kernel, fp32 weights)",
    "script-int8": "TorchScript int8: --quantize int8 (row-wise int8 weights)",
    "aoti-fp32": "AOTInductor fp32: --format aoti (torch.export + ahead-of-time compilation)",
}
VARIANT_COLORS = {
    "eager-fp32": "#dd8452",
    "eager-int8": "#e8b88a",
    "script-fp32": "#4c72b0",
    "script-int8": "#8fb0e0",
    "aoti-fp32": "#55a868",
}
SPEEDUP_GOAL = 2.0
SIZE_GOAL = 0.35
AUC_GOAL = 0.002
MODEL_LABELS = {"wide_deep": "Wide&Deep", "dnn": "DNN", "cbmr": "CBMR", "mmoe": "MMoE", "star": "STAR"}


@dataclass
class Settings:
    """How the benchmark runs (see the module docstring)."""

    data: str
    runs: str
    out: str
    models: Sequence[str] = MODELS
    batches: Sequence[int] = BATCHES
    epochs: int = 3
    rounds: int = 3
    warmup: int = 5
    min_time: float = 0.6
    min_calls: int = 30
    aoti: bool = False
    threads: int = 1
    quick: bool = False
    train_overrides: List[str] = field(default_factory=list)


# --- runs and artifacts ----------------------------------------------------------------------------------------
def train(model: str, s: Settings) -> str:
    """The run folder of ``model`` (trained now unless a finished run is there)."""
    run = os.path.join(s.runs, model)
    if os.path.isfile(os.path.join(run, "metrics.json")):
        log.info("%s: reusing the finished run in %s", model, run)
        return run
    from recsys.train.trainer import Trainer

    cfg = load_config(
        os.path.join(REPO, "configs", "wide_deep_synthetic.yaml"),
        [
            f"data.path={s.data}",
            f"run_dir={run}",
            f"model.name={model}",
            "model.params={}",
            f"train.epochs={s.epochs}",
            "train.progress=false",
            "tensorboard=false",
            *s.train_overrides,
        ],
    )
    t0 = time.perf_counter()
    Trainer(cfg, overwrite=True).fit()
    log.info("%s: trained in %.0f s", model, time.perf_counter() - t0)
    return run


def export_all(model: str, run: str, s: Settings) -> Dict[str, Dict[str, Any]]:
    """The model's artifacts by variant: folder, manifest and export seconds."""
    out: Dict[str, Dict[str, Any]] = {}
    jobs = [("script-fp32", "none", "torchscript"), ("script-int8", "int8", "torchscript")]
    if s.aoti:
        jobs.append(("aoti-fp32", "none", "aoti"))
    for variant, quantize, fmt in jobs:
        folder = os.path.join(s.runs, "artifacts", f"{model}-{variant}")
        t0 = time.perf_counter()
        manifest = export_run(run, folder, quantize=quantize, program_format=fmt, overwrite=True)
        out[variant] = {"folder": folder, "manifest": manifest, "export_s": time.perf_counter() - t0}
        log.info("%s %s: exported in %.1f s", model, variant, out[variant]["export_s"])
    return out


def test_rows(run: str, data: str, folder: str) -> Tuple[pa.Table, pa.Table]:
    """``recsys predict``'s scores of the test split and the raw rows they belong to, in the same order."""
    scores = os.path.join(folder, "predict.parquet")
    if recsys_main(["predict", "--run-dir", run, "--split", "test", "--out", scores]) != 0:
        raise RuntimeError(f"recsys predict failed for {run}")
    predicted = pq.read_table(scores)
    files = sorted(os.path.join(data, f) for f in os.listdir(data) if f.endswith(".parquet"))
    raw = pa.concat_tables([pq.read_table(f) for f in files])
    position = {int(r): i for i, r in enumerate(raw.column("row_id").to_numpy())}
    return predicted, raw.take(pa.array([position[int(r)] for r in predicted.column("row_id").to_numpy()]))


def table_bytes(program: Any) -> int:
    """Bytes of the embedding tables inside a TorchScript or eager module (FBGEMM buffers or EBC weights)."""
    total = 0
    for name, t in list(program.named_buffers()) + list(program.named_parameters()):
        if name.endswith("weights_host") or ".embedding_bags." in name:
            total += t.numel() * t.element_size()
    return total


def quality(artifacts: Dict[str, Dict[str, Any]], predicted: pa.Table, rows: pa.Table) -> Dict[str, Any]:
    """CTR AUC and CTCVR AUC (CVR x CTR against orders, all impressions) of each artifact and of recsys predict."""
    click, order = rows.column("click").to_numpy(), rows.column("order").to_numpy()

    def aucs(ctr: np.ndarray, cvr: np.ndarray) -> Dict[str, float]:
        return {"ctr_auc": auc(ctr, click), "ctcvr_auc": auc(ctr * cvr, order)}

    out = {
        "predict": aucs(predicted.column("score_ctr").to_numpy(), predicted.column("score_cvr").to_numpy()),
        "rows": rows.num_rows,
    }
    for variant, a in artifacts.items():
        scores = runtime.Artifact.open(a["folder"]).score(rows)
        out[variant] = aucs(scores["ctr"], scores["cvr"])
        out[variant]["max_abs_diff_vs_predict"] = float(
            np.abs(scores["ctr"] - predicted.column("score_ctr").to_numpy()).max()
        )
    return out


def sizes(artifacts: Dict[str, Dict[str, Any]]) -> Dict[str, Dict[str, int]]:
    out = {}
    for variant, a in artifacts.items():
        files = a["manifest"]["files"]
        program = a["manifest"]["program"]["file"]
        entry = {"program": files[program]["size"], "artifact": sum(e["size"] for e in files.values())}
        if program.endswith(".pt"):
            entry["tables"] = table_bytes(torch.jit.load(os.path.join(a["folder"], program)))
        out[variant] = entry
    return out


SCALED_ROWS = {"user_id": 10**6, "item_id": 10**5, "host_id": 10**4}


def scaled_sizes(model: str, run: str, folder: str) -> Dict[str, Any]:
    """Program bytes, fp32 and int8, of ``model`` with the id tables at production sizes (:data:`SCALED_ROWS`;
    the other tables and every option as in ``run``): random weights, since sizes do not depend on training.
    The same compilation as ``recsys export`` (write_program), without a run folder."""
    import dataclasses

    from recsys.models.base import build_model
    from recsys.serving.export import sample_inputs, write_program
    from recsys.serving.loading import materialize, open_run

    trained = open_run(run)
    schema = dataclasses.replace(
        trained.schema,
        sparse=tuple(
            dataclasses.replace(f, num_embeddings=SCALED_ROWS.get(f.name, f.num_embeddings))
            for f in trained.schema.sparse
        ),
    )
    out: Dict[str, Any] = {"rows": {f.name: f.num_embeddings for f in schema.sparse}}
    for quantize in ("none", "int8"):
        torch.manual_seed(0)
        net = build_model(trained.config.model, schema)
        materialize(net, torch.device("cpu"))
        with torch.no_grad():
            for name, p in net.named_parameters():
                if ".embedding_bags." in name:
                    p.uniform_(-0.05, 0.05)
        target = os.path.join(folder, f"scaled-{model}-{quantize}")
        shutil.rmtree(target, ignore_errors=True)
        os.makedirs(target)
        entry = write_program(ServingModule(net.eval()), quantize, "torchscript", target, sample_inputs(schema))
        program = os.path.join(target, entry["file"])
        out["fp32" if quantize == "none" else "int8"] = {
            "program": os.path.getsize(program),
            "tables": table_bytes(torch.jit.load(program)),
        }
        shutil.rmtree(target, ignore_errors=True)
    out["ratio"] = out["int8"]["program"] / out["fp32"]["program"]
    return out


# --- timing --------------------------------------------------------------------------------------------------
@dataclass
class Cell:
    """One timed thing: ``fn(*args)`` for ``rows`` rows."""

    model: str
    variant: str
    batch: int
    fn: Callable[..., Any]
    args: Tuple[Any, ...]
    latencies: List[float] = field(default_factory=list)
    rounds: List[Dict[str, float]] = field(default_factory=list)


def run_cell(cell: Cell, s: Settings) -> None:
    """One round of ``cell``: warm-up calls, then timed calls (at least ``min_calls`` and ``min_time``)."""
    with torch.inference_mode():
        for _ in range(s.warmup):
            cell.fn(*cell.args)
        calls, load = 0, os.getloadavg()[0]
        wall0, cpu0 = time.perf_counter(), time.process_time()
        while calls < s.min_calls or time.perf_counter() - wall0 < s.min_time:
            t = time.perf_counter()
            cell.fn(*cell.args)
            cell.latencies.append(time.perf_counter() - t)
            calls += 1
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    cell.rounds.append(
        {
            "calls": calls,
            "wall_s": wall,
            "cpu_s": cpu,
            "rows_per_s": calls * cell.batch / wall,
            "rows_per_cpu_s": calls * cell.batch / max(cpu, 1e-9),
            "load_before": load,
            "load_after": os.getloadavg()[0],
        }
    )


def stats(values: Sequence[float]) -> Dict[str, float]:
    return {"median": float(np.median(values)), "min": float(np.min(values)), "max": float(np.max(values))}


def cell_summary(cell: Cell) -> Dict[str, Any]:
    lat = np.asarray(cell.latencies) * 1e3
    return {
        "model": cell.model,
        "variant": cell.variant,
        "batch": cell.batch,
        "calls": len(cell.latencies),
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "rows_per_s": stats([r["rows_per_s"] for r in cell.rounds]),
        "rows_per_cpu_s": stats([r["rows_per_cpu_s"] for r in cell.rounds]),
        "rounds": cell.rounds,
    }


def ratio(a: Cell, b: Cell, key: str) -> Dict[str, float]:
    """Per-round ratio of ``a``'s to ``b``'s throughput (``key``), median with min and max."""
    return stats([x[key] / y[key] for x, y in zip(a.rounds, b.rounds)])


def model_cells(model: str, run: str, artifacts: Dict[str, Dict[str, Any]], rows: pa.Table, s: Settings) -> List[Cell]:
    """The timed cells of one model: every variant at every batch size, on the first B test rows."""
    prep = runtime.Artifact.open(artifacts["script-fp32"]["folder"]).preprocess
    inputs = {}
    for b in s.batches:
        arrays = prep(rows.slice(0, b))
        inputs[b] = tuple(torch.from_numpy(arrays[k]) for k in runtime.INPUT_NAMES)
    eager = ServingModule(load_for_inference(run))
    eager_int8 = inference_tables(copy.deepcopy(eager), "int8")
    programs: Dict[str, Callable[..., Any]] = {"eager-fp32": eager, "eager-int8": eager_int8}
    for variant, a in artifacts.items():
        entry = a["manifest"]["program"]
        programs[variant] = runtime.load_program(os.path.join(a["folder"], entry["file"]), entry["format"])
    return [Cell(model, v, b, programs[v], inputs[b]) for v in VARIANTS if v in programs for b in s.batches]


def preprocess_cells(artifact: str, rows: pa.Table, s: Settings) -> List[Cell]:
    prep = runtime.Artifact.open(artifact).preprocess
    return [Cell("preprocess", "runtime.py", b, prep, (rows.slice(0, b),)) for b in s.batches]


# --- report --------------------------------------------------------------------------------------------------
def goals(result: Dict[str, Any]) -> Dict[str, Any]:
    """The issue's goals, checked per model."""
    out: Dict[str, Any] = {"speedup": {}, "size": {}, "auc": {}, "p99_batch_256_ms": {}}
    for model in result["models"]:
        sp = result["speedups"][model]
        out["speedup"][model] = {
            str(b): sp[f"script-fp32/eager-fp32@{b}"]["rows_per_cpu_s"]["median"] for b in result["batches"] if b <= 16
        }
        size = result["sizes"][model]
        out["size"][model] = {
            "artifact": size["script-int8"]["artifact"] / size["script-fp32"]["artifact"],
            "tables": size["script-int8"]["tables"] / size["script-fp32"]["tables"],
            "scaled_program": result["scaled_sizes"][model]["ratio"],
        }
        q = result["quality"][model]
        out["auc"][model] = {k: q["script-int8"][k] - q["script-fp32"][k] for k in ("ctr_auc", "ctcvr_auc")}
        cells = {(c["variant"], c["batch"]): c for c in result["cells"] if c["model"] == model}
        out["p99_batch_256_ms"][model] = {v: cells[(v, 256)]["p99_ms"] for v in VARIANTS if (v, 256) in cells}
    return out


def goal_lines(result: Dict[str, Any]) -> List[str]:
    """One line per goal: met or missed, for which models (docs/serving.md says why)."""
    g = result["goals"]
    slow = [f"{m} at batch {b} ({v:.2f}x)" for m, sp in g["speedup"].items() for b, v in sp.items() if v < SPEEDUP_GOAL]
    big = [
        f"{m} ({v['artifact']:.2f}x; {v['scaled_program']:.2f}x with production-size id tables)"
        for m, v in g["size"].items()
        if v["artifact"] > SIZE_GOAL
    ]
    off = [f"{m} ({k} {d:+.4f})" for m, v in g["auc"].items() for k, d in v.items() if abs(d) > AUC_GOAL]
    return [
        f"- exported >= {SPEEDUP_GOAL:g}x eager at batch <= 16: "
        + ("met for every model" if not slow else "missed for " + ", ".join(slow)),
        f"- int8 artifact <= {SIZE_GOAL:g}x fp32: "
        + ("met for every model" if not big else "missed for " + ", ".join(big)),
        f"- int8 AUC within {AUC_GOAL:g} of fp32: "
        + ("met for every model" if not off else "missed for " + ", ".join(off)),
        '- why a goal is missed, and what would meet it: docs/serving.md, "Results"',
    ]


def markdown(result: Dict[str, Any]) -> str:
    env = result["environment"]
    g = result["goals"]
    lines = [
        "## Serving: latency and throughput on CPU",
        "",
        environment_markdown(env),
        f"Load average (1 min) around every round in the JSON; at the end: {result['load_end']}. "
        f"{result['threads']} intra-op thread; {result['rounds']} interleaved rounds per cell; latency "
        "percentiles over every call of every round; throughput medians (min-max) over rounds.",
        "",
        f"Data: {result['data']}; test split {result['test_rows']:,} rows. Models trained "
        f"{result['epochs']} epochs (early stopping) with their default options.",
        "",
    ]
    lines += [
        "### Goals",
        "",
        "| model | exported / eager, batch 1 | batch 16 | int8 / fp32 artifact size | int8 / fp32 tables | "
        "int8 / fp32 program, production-size id tables | CTR AUC int8 - fp32 | CTCVR AUC int8 - fp32 | "
        "p99 at batch 256, TorchScript fp32 / int8 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in result["models"]:
        sp, size, a, p99 = g["speedup"][m], g["size"][m], g["auc"][m], g["p99_batch_256_ms"][m]
        lines.append(
            f"| {MODEL_LABELS.get(m, m)} | {sp.get('1', float('nan')):.2f}x | {sp.get('16', float('nan')):.2f}x "
            f"| {size['artifact']:.2f}x | {size['tables']:.2f}x | {size['scaled_program']:.2f}x "
            f"| {a['ctr_auc']:+.5f} | {a['ctcvr_auc']:+.5f} "
            f"| {p99.get('script-fp32', float('nan')):.2f} / {p99.get('script-int8', float('nan')):.2f} ms |"
        )
    lines += [
        "",
        "Exported / eager: rows per CPU-second of the fp32 TorchScript program over the eager fp32 model "
        f"(goal >= {SPEEDUP_GOAL:g}x); sizes: the whole artifact and the tables inside the program (goal "
        f"<= {SIZE_GOAL:g}x), and the program at production table sizes ("
        + ", ".join(f"{k} {v:,} rows" for k, v in SCALED_ROWS.items())
        + f", random weights); AUC on the raw test rows (goal within {AUC_GOAL:g}).",
        "",
    ]
    lines += goal_lines(result)
    lines += [
        "",
        "### Latency and throughput",
        "",
        "| model | variant | batch | p50 ms | p99 ms | rows/s | rows per CPU-second | calls |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in result["cells"]:
        r, rc = c["rows_per_s"], c["rows_per_cpu_s"]
        lines.append(
            f"| {MODEL_LABELS.get(c['model'], c['model'])} | {c['variant']} | {c['batch']:,} | "
            f"{c['p50_ms']:.3f} | {c['p99_ms']:.3f} | {r['median']:,.0f} ({r['min']:,.0f}-{r['max']:,.0f}) | "
            f"{rc['median']:,.0f} ({rc['min']:,.0f}-{rc['max']:,.0f}) | {c['calls']} |"
        )
    lines += [
        "",
        "### Sizes, AUC and export time",
        "",
        "| model | variant | program MB | artifact MB | tables MB | CTR AUC | CTCVR AUC | max abs CTR diff vs "
        "recsys predict | export s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in result["models"]:
        q = result["quality"][m]
        lines.append(
            f"| {MODEL_LABELS.get(m, m)} | recsys predict | | | | {q['predict']['ctr_auc']:.5f} | "
            f"{q['predict']['ctcvr_auc']:.5f} | | |"
        )
        for v, size in result["sizes"][m].items():
            tables = f"{size['tables'] / 1e6:.3f}" if "tables" in size else "-"
            lines.append(
                f"| {MODEL_LABELS.get(m, m)} | {v} | {size['program'] / 1e6:.3f} | "
                f"{size['artifact'] / 1e6:.3f} | {tables} | {q[v]['ctr_auc']:.5f} | {q[v]['ctcvr_auc']:.5f} | "
                f"{q[v]['max_abs_diff_vs_predict']:.2e} | {result['export_seconds'][m][v]:.1f} |"
            )
    return "\n".join(lines) + "\n"


def figures(result: Dict[str, Any]) -> Dict[str, Any]:
    """Rows per CPU-second of every variant of every model, one panel per batch size (log axis)."""
    from benchmarks import plots

    cells = {(c["model"], c["variant"], c["batch"]): c for c in result["cells"] if c["model"] in result["models"]}
    variants = [v for v in VARIANTS if any(k[1] == v for k in cells)]
    models = list(result["models"])
    batches = list(result["batches"])
    height = 0.8 / len(variants)
    fig = plots._figure(12, 2.8 + 0.28 * len(models) * len(variants) * 2)
    axes = fig.subplots(2, (len(batches) + 1) // 2, sharey=True).flatten()
    for ax, batch in zip(axes, batches):
        values = []
        for j, v in enumerate(variants):
            ys = np.arange(len(models)) + (j - (len(variants) - 1) / 2) * height
            meds = [cells[(m, v, batch)]["rows_per_cpu_s"]["median"] for m in models]
            errs = plots._errs([cells[(m, v, batch)]["rows_per_cpu_s"] for m in models])
            ax.barh(
                ys,
                meds,
                height=height * 0.9,
                xerr=errs,
                color=VARIANT_COLORS[v],
                capsize=1.5,
                error_kw={"linewidth": 0.8},
            )
            for y, med, m in zip(ys, meds, models):
                top = cells[(m, v, batch)]["rows_per_cpu_s"]["max"]
                values.append(
                    ax.text(top, y, f" {plots.compact(med)}", va="center", ha="left", fontsize=plots.VALUE_SIZE - 1.5)
                )
        ax.set_xscale("log")
        low = min(c["rows_per_cpu_s"]["min"] for k, c in cells.items() if k[2] == batch)
        high = max(c["rows_per_cpu_s"]["max"] for k, c in cells.items() if k[2] == batch)
        ax.set_xlim(low / 2, high * 6)
        ax.set_yticks(np.arange(len(models)), [MODEL_LABELS.get(m, m) for m in models])
        ax.set_ylim(len(models) - 0.5, -0.5)
        ax.set_xlabel("rows per CPU-second (log scale)")
        ax.set_title(f"batch {batch:,}", fontsize=10)
    for ax in axes[len(batches) :]:
        ax.set_visible(False)
    plots._title(
        fig,
        "Serving throughput: eager model vs exported programs, fp32 vs int8 tables",
        f"live-streaming world, test rows; {result['threads']} thread; {plots._machine(result['environment'])}",
    )
    plots._legend(
        fig,
        [plots._bar_handle(VARIANT_COLORS[v]) for v in variants],
        [VARIANT_LEGEND[v] for v in variants],
        ncols=1,
        title="bar: median over rounds, whiskers min-max, value printed",
    )
    return {"throughput": fig}


# --- main ----------------------------------------------------------------------------------------------------
def run(s: Settings) -> Dict[str, Any]:
    torch.set_num_threads(s.threads)
    os.makedirs(s.out, exist_ok=True)
    result: Dict[str, Any] = {
        "benchmark": "serving",
        "environment": environment(),
        "data": s.data,
        "models": list(s.models),
        "batches": list(s.batches),
        "threads": s.threads,
        "rounds": s.rounds,
        "epochs": s.epochs,
        "quality": {},
        "sizes": {},
        "scaled_sizes": {},
        "export_seconds": {},
        "speedups": {},
    }
    cells: List[Cell] = []
    for model in s.models:
        run_dir = train(model, s)
        artifacts = export_all(model, run_dir, s)
        folder = os.path.join(s.runs, "artifacts", model)
        os.makedirs(folder, exist_ok=True)
        predicted, rows = test_rows(run_dir, s.data, folder)
        result["test_rows"] = rows.num_rows
        result["quality"][model] = quality(artifacts, predicted, rows)
        result["sizes"][model] = sizes(artifacts)
        result["export_seconds"][model] = {v: a["export_s"] for v, a in artifacts.items()}
        result["scaled_sizes"][model] = scaled_sizes(model, run_dir, os.path.join(s.runs, "artifacts"))
        cells += model_cells(model, run_dir, artifacts, rows, s)
        if model == s.models[0]:
            cells += preprocess_cells(artifacts["script-fp32"]["folder"], rows, s)
    for r in range(s.rounds):
        order = cells[r % len(cells) :] + cells[: r % len(cells)]
        log.info("round %d/%d: %d cells (load %.2f)", r + 1, s.rounds, len(order), os.getloadavg()[0])
        for cell in order:
            run_cell(cell, s)
    by_key = {(c.model, c.variant, c.batch): c for c in cells}
    for model in s.models:
        result["speedups"][model] = {
            f"{a}/{b}@{batch}": {
                k: ratio(by_key[(model, a, batch)], by_key[(model, b, batch)], k)
                for k in ("rows_per_s", "rows_per_cpu_s")
            }
            for batch in s.batches
            for a, b in (
                ("script-fp32", "eager-fp32"),
                ("script-int8", "eager-fp32"),
                ("script-int8", "script-fp32"),
                ("eager-int8", "eager-fp32"),
                ("aoti-fp32", "eager-fp32"),
                ("aoti-fp32", "script-fp32"),
            )
            if (model, a, batch) in by_key
        }
    result["cells"] = [cell_summary(c) for c in cells]
    result["load_end"] = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    result["goals"] = goals(result)
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serving", description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.path.join(REPO, "data", "synthetic"), help="the synthetic world")
    p.add_argument("--runs", default=os.path.join(REPO, "runs", "serving"), help="run folders (reused when done)")
    p.add_argument("--out", default=RESULTS, help="where serving_cpu.{json,md,png} and the artifacts go")
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--batches", nargs="+", type=int, default=list(BATCHES))
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--min-time", type=float, default=0.6)
    p.add_argument("--min-calls", type=int, default=30)
    p.add_argument("--aoti", action="store_true", help="also export and time the fp32 AOTInductor program")
    p.add_argument("--quick", action="store_true", help="a tiny world, two models, one round (harness check)")
    args = p.parse_args(argv)
    setup_logging()
    logging.getLogger("benchmarks").setLevel(logging.INFO)
    s = Settings(
        data=args.data,
        runs=args.runs,
        out=args.out,
        models=args.models,
        batches=args.batches,
        epochs=args.epochs,
        rounds=args.rounds,
        min_time=args.min_time,
        min_calls=args.min_calls,
        aoti=args.aoti,
        quick=args.quick,
    )
    if args.quick:
        from recsys.data.synthetic import WorldConfig, generate

        s.data = os.path.join(args.out, "world")
        if not os.path.isdir(s.data):
            generate(WorldConfig(rows=6000, users=300, hosts=40, items=120, seed=3), s.data, progress=False)
        s.runs, s.models, s.rounds, s.epochs = os.path.join(args.out, "runs"), args.models[:2], 1, 1
        s.min_time, s.min_calls, s.warmup = 0.05, 3, 1
        s.train_overrides = ["data.batch_size=256", "model.embedding_dim=8"]
    result = run(s)
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, "serving_cpu")
    write_json(base + ".json", result)
    write_text(base + ".md", markdown(result))
    from benchmarks import plots

    for name, fig in figures(result).items():
        plots.save(fig, f"{base}_{name}.png")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
