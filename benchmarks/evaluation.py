"""Evaluation throughput: ``recsys.train.metrics.evaluate`` rows per wall-second and per CPU-second.

    python -m benchmarks.evaluation [--rows 1000000 10000000] [--rounds 3] [--baseline REF]

Synthetic predictions shaped like the live-streaming world's: three tasks (``ctr``; ``cvr`` depending on
``ctr``, with its CTCVR AUC; ``stay``, a regression on clicked rows with graded-relevance NDCG and an AUC
threshold), oracle probabilities for ``ctr`` and ``cvr``, 4 scenarios and a 3-valued lifecycle stage (so every
metric is computed for 1 + 4 + 3 slices), ~10^5 users with skewed activity. Scores are float32, as the model
outputs are. The rounds are interleaved (round 1 of every size, then round 2, ...), so a change in the machine's
load hits every size alike; the load average is recorded around every measurement.

``--baseline REF`` also times the implementation of ``recsys/train/metrics.py`` at git revision REF (read with
``git show``, loaded as a module for this run only) on the sizes up to ``--baseline-max-rows``, and reports how
far its numbers are from the current ones (to float32 precision: the old one computed in float32; NDCG also
differs where scores tie, which the old implementation broke by sort order).

Issue 20's goal: at least 10^6 rows per CPU-second.
"""

import argparse
import importlib.util
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from types import ModuleType
from typing import Any, Dict, List, Optional

import numpy as np

from benchmarks.common import RESULTS, environment, environment_markdown, write_json, write_text

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCENARIOS, STAGES = 4, ("new", "active", "loyal")


def schema():
    from recsys.schema import Schema, SparseFeature, Task

    return Schema(
        sparse=(SparseFeature("user_id", 1),),
        tasks=(
            Task("ctr"),
            Task("cvr", depends_on="ctr"),
            Task("stay", kind="regression", depends_on="ctr", eval_threshold=60.0),
        ),
        num_scenarios=SCENARIOS,
        scenario_names=("feed", "search", "live", "follow"),
        user_feature="user_id",
        eval_groups=(("stage", STAGES),),
    )


def synthetic_predictions(rows: int, users: int, seed: int = 0) -> Dict[str, Any]:
    """The columns of ``rows`` scored rows (see the module docstring), as plain arrays."""
    from recsys.data.dataset import splitmix64

    rng = np.random.default_rng(seed)
    activity = rng.lognormal(0.0, 1.0, users)
    user = rng.choice(users, rows, p=activity / activity.sum())
    logit = rng.normal(-1.5, 1.0, rows) + 0.3 * np.log(activity[user])
    p_click = 1 / (1 + np.exp(-logit))
    click = (rng.random(rows) < p_click).astype(np.float32)
    p_order = 1 / (1 + np.exp(-rng.normal(-1.0, 1.0, rows)))
    order = (click * (rng.random(rows) < p_order)).astype(np.float32)
    stay = (click * np.round(rng.exponential(45.0, rows))).astype(np.float32)

    def noisy(p: np.ndarray) -> np.ndarray:  # a model's estimate of p: its logit plus noise
        return (1 / (1 + np.exp(-(np.log(p / (1 - p)) + rng.normal(0, 0.8, rows))))).astype(np.float32)

    return {
        "row_id": np.arange(rows, dtype=np.int64),
        "scenario": rng.integers(0, SCENARIOS, rows),
        "user": user.astype(np.int64),
        "labels": {"ctr": click, "cvr": order, "stay": stay},
        "scores": {
            "ctr": noisy(p_click),
            "cvr": noisy(p_order),
            "stay": (stay * rng.lognormal(0, 0.5, rows) + rng.exponential(5.0, rows)).astype(np.float32),
        },
        "groups": {"stage": rng.integers(0, len(STAGES), rows)},
        "oracle": {"ctr": p_click.astype(np.float32), "cvr": p_order.astype(np.float32)},
        # a 64-bit raw-user key per row, as Dataset puts there (recsys.data.history.value_keys)
        "user_key": splitmix64(user).view(np.int64),
    }


def baseline_module(ref: str) -> ModuleType:
    """``recsys/train/metrics.py`` at git revision ``ref``, loaded as a module (for this run only)."""
    source = subprocess.run(
        ["git", "show", f"{ref}:recsys/train/metrics.py"], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout
    folder = tempfile.mkdtemp(prefix="recsys-baseline-")
    try:
        path = os.path.join(folder, "baseline_metrics.py")
        with open(path, "w") as f:
            f.write(source)
        spec = importlib.util.spec_from_file_location("baseline_metrics", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return module


def predictions_for(module: ModuleType, columns: Dict[str, Any]):
    """``module.Predictions`` of ``columns`` (the baseline's has no ``user_key``: it groups by ``user``)."""
    fields = dict(columns)
    if not hasattr(module.Predictions, "users"):
        fields.pop("user_key")
    return module.Predictions(**fields)


def measure(fn) -> Dict[str, float]:
    load = os.getloadavg()[0]
    cpu, wall = time.process_time(), time.perf_counter()
    report = fn()
    out = {
        "wall_s": time.perf_counter() - wall,
        "cpu_s": time.process_time() - cpu,
        "load_before": load,
        "load_after": os.getloadavg()[0],
    }
    return out, report


def summary(rows: int, runs: List[Dict[str, float]]) -> Dict[str, Any]:
    def stats(values: List[float]) -> Dict[str, float]:
        return {"median": float(np.median(values)), "min": float(np.min(values)), "max": float(np.max(values))}

    return {
        "rounds": runs,
        "rows_per_wall_s": stats([rows / r["wall_s"] for r in runs]),
        "rows_per_cpu_s": stats([rows / r["cpu_s"] for r in runs]),
        "cpu_s": stats([r["cpu_s"] for r in runs]),
    }


def differences(new: Dict[str, float], old: Dict[str, float]) -> Dict[str, float]:
    """Largest |new - old| per metric name over the keys both reports have."""
    out: Dict[str, float] = {}
    for key in set(new) & set(old):
        if "/" not in key or new[key] != new[key] or old[key] != old[key]:
            continue
        name = key.split("/")[1]
        out[name] = max(out.get(name, 0.0), abs(float(new[key]) - float(old[key])))
    return dict(sorted(out.items()))


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.evaluation", description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--baseline", default=None, help="git revision of an older recsys/train/metrics.py to time too")
    p.add_argument("--baseline-max-rows", type=int, default=1_000_000)
    p.add_argument("--baseline-rounds", type=int, default=1)
    p.add_argument("--out", default=RESULTS)
    args = p.parse_args(argv)

    from recsys.train import metrics

    sch = schema()
    data = {n: synthetic_predictions(n, args.users, seed=n % 1000) for n in args.rows}
    current = {n: predictions_for(metrics, data[n]) for n in args.rows}
    old = baseline_module(args.baseline) if args.baseline else None
    old_sizes = [n for n in args.rows if n <= args.baseline_max_rows] if old is not None else []
    runs: Dict[int, List[Dict[str, float]]] = {n: [] for n in args.rows}
    old_runs: Dict[int, List[Dict[str, float]]] = {n: [] for n in old_sizes}
    reports: Dict[int, Dict[str, float]] = {}
    old_reports: Dict[int, Dict[str, float]] = {}
    metrics.evaluate(sch, predictions_for(metrics, synthetic_predictions(10_000, 1_000)))  # warm-up
    for r in range(max(args.rounds, args.baseline_rounds if old_sizes else 0)):
        for n in args.rows:
            if r < args.rounds:
                run, reports[n] = measure(lambda preds=current[n]: metrics.evaluate(sch, preds))
                runs[n].append(run)
                print(
                    f"round {r + 1} {n:,} rows: {run['cpu_s']:.2f} CPU-s, {run['wall_s']:.2f} s "
                    f"(load {run['load_before']:.2f})",
                    file=sys.stderr,
                )
            if n in old_sizes and r < args.baseline_rounds:
                baseline_preds = predictions_for(old, data[n])
                run, old_reports[n] = measure(lambda preds=baseline_preds: old.evaluate(sch, preds))
                old_runs[n].append(run)
                print(f"round {r + 1} {n:,} rows, baseline: {run['cpu_s']:.2f} CPU-s", file=sys.stderr)

    env = environment()
    env["numpy"], env["pandas"] = np.__version__, __import__("pandas").__version__
    env["loadavg_end"] = list(os.getloadavg())
    result: Dict[str, Any] = {
        "environment": env,
        "workload": {
            "users": args.users,
            "tasks": list(sch.task_names),
            "scenarios": SCENARIOS,
            "stages": list(STAGES),
            "report_keys": {n: len(reports[n]) for n in args.rows},
        },
        "current": {n: summary(n, runs[n]) for n in args.rows},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if old is not None:
        result["baseline"] = {"ref": args.baseline, **{n: summary(n, old_runs[n]) for n in old_sizes}}
        result["baseline_differences"] = {n: differences(reports[n], old_reports[n]) for n in old_sizes}

    lines = [
        "## Evaluation throughput",
        "",
        environment_markdown(env),
        f"numpy {env['numpy']}, pandas {env['pandas']}. Load average (1 min) around each measurement in the "
        "JSON; at the end: " + ", ".join(f"{x:.2f}" for x in env["loadavg_end"]) + f" on {env['cpu_count']} cores.",
        "",
        f"`evaluate()` on synthetic predictions: 3 tasks (ctr; cvr on clicks, with CTCVR; stay, a regression on "
        f"clicks), oracle AUCs, {SCENARIOS} scenarios x {len(STAGES)} stages (8 slices per metric), "
        f"{args.users:,} users; {len(reports[args.rows[0]])} report keys. Median (min-max) of {args.rounds} "
        "interleaved rounds.",
        "",
        "| implementation | rows | rows per CPU-second | rows per wall-second | CPU-seconds |",
        "|---|---|---|---|---|",
    ]

    def row(name: str, n: int, s: Dict[str, Any]) -> str:
        c, w = s["rows_per_cpu_s"], s["rows_per_wall_s"]
        return (
            f"| {name} | {n:,} | {c['median']:,.0f} ({c['min']:,.0f}-{c['max']:,.0f}) | "
            f"{w['median']:,.0f} ({w['min']:,.0f}-{w['max']:,.0f}) | {s['cpu_s']['median']:.2f} |"
        )

    for n in args.rows:
        lines.append(row("current", n, result["current"][n]))
    for n in old_sizes:
        lines.append(row(f"baseline ({args.baseline})", n, result["baseline"][n]))
    if old_sizes:
        lines += [
            "",
            "Speed-up (CPU-seconds, baseline / current): "
            + ", ".join(
                f"{n:,} rows {result['baseline'][n]['cpu_s']['median'] / result['current'][n]['cpu_s']['median']:.0f}x"
                for n in old_sizes
            )
            + ".",
            "",
            "Largest |current - baseline| per metric over all keys: the baseline computed AUC and NDCG "
            "(torchmetrics) and the means in float32, the current code in float64; NDCG also differs where scores "
            "tie within a user (tie-averaged gains against the baseline's sort order):",
            "",
        ]
        for n in old_sizes:
            lines.append(
                f"- {n:,} rows: " + ", ".join(f"{k} {v:.1e}" for k, v in result["baseline_differences"][n].items())
            )
    lines += [
        "",
        f"Peak resident memory of the run: {result['peak_rss_mb']:,.0f} MB.",
        "",
        "![evaluation.png](evaluation.png)",
    ]
    md = "\n".join(lines) + "\n"
    os.makedirs(args.out, exist_ok=True)
    write_json(os.path.join(args.out, "evaluation.json"), result)
    write_text(os.path.join(args.out, "evaluation.md"), md)
    from benchmarks import plots

    plots.render([os.path.join(args.out, "evaluation.json")])
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
