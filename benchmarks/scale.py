"""Speed and memory at scale: ``recsys train`` end to end on synthetic worlds of growing size, in both data modes.

    python -m benchmarks.scale [--sizes 1e6,1e7] [--modes memory,stream] [--max-steps-above 1e7:2000]
                               [--encoder-ids 1e7]

For each size a world is generated (timed), then each mode (``data.in_memory`` true / false) trains Wide&Deep for
one epoch with the default splits (80/10/10) in a fresh process, which reports:

    fit        the validation + vocabulary-fitting pass
    read       Parquet -> encoded columns (in-memory mode only; streaming encodes while it trains)
    train      the training loop (the trainer's own clock: steps only), its samples/s and the share of it the loop
               spent waiting for the loader
    eval       every evaluation pass (validation during and after training, test) plus checkpoints
    end_to_end trained samples / wall time of the whole run (setup, fit, read, train, eval), and its ratio to the
               loop's samples/s
    peak_rss   the process's peak resident set (VmHWM), everything included; and the peak before the first
               evaluation (the data path and the training loop: what must stay flat as rows grow; exact
               evaluation then holds every scored row of the split, ~160 B per row at its peak)

Sizes above a ``--max-steps-above`` threshold train a step-limited run (fit and evaluation stay full passes).
``--encoder-ids`` times one 262k-id chunk of the vocabulary lookup at that vocabulary size: the old per-chunk
``pc.index_in(value_set=vocab)`` against the prebuilt :class:`~recsys.data.encoding.VocabIndex`.

Goals (issue 20): end to end >= 0.75x of the loop's samples/s at 10^7 rows; streaming peak RSS at 3x10^7 within
1.2x of 10^6; loader wait < 5% of the loop at 10^7.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

import numpy as np

from benchmarks.common import RESULTS, environment, environment_markdown, write_json, write_text

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = {"memory": True, "stream": False}


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def world_config(rows: int, ids: int):
    """The world of ``rows`` impressions over fixed id spaces (``ids`` users and items, ``ids / 10`` hosts), so
    that what grows from one size to the next is the number of rows, not the tables."""
    from recsys.data.synthetic import WorldConfig

    return WorldConfig(rows=rows, users=ids, hosts=max(ids // 10, 100), items=ids, rows_per_file=1_000_000)


def run_cell(data: str, mode: str, run_dir: str, batch_size: int, max_steps: Optional[int]) -> Dict[str, Any]:
    """One ``recsys train`` of Wide&Deep in this process, with its phases timed (see the module docstring)."""
    from recsys.config import load_config
    from recsys.console import setup_logging
    from recsys.data.dataset import Dataset
    from recsys.train.trainer import Trainer

    setup_logging()
    overrides = [
        f"data.path={data}",
        f"run_dir={run_dir}",
        f"data.batch_size={batch_size}",
        "train.progress=false",
        "tensorboard=false",
        f"data.in_memory={str(MODES[mode]).lower()}",
        "train.epochs=1",
    ]
    if max_steps:
        overrides.append(f"train.max_steps={max_steps}")
    cfg = load_config(os.path.join(REPO, "configs", "wide_deep_synthetic.yaml"), overrides)
    start = time.perf_counter()
    dataset = Dataset.from_config(cfg)
    phases: Dict[str, float] = {}

    def timed(name: str, fn):
        def run(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                phases[name] = phases.get(name, 0.0) + time.perf_counter() - t

        return run

    dataset.fit = timed("fit", dataset.fit)
    dataset.read = timed("read", dataset.read)
    trainer = Trainer(cfg, dataset=dataset)
    setup = time.perf_counter() - start
    loaders: List[Any] = []
    make_loader = trainer.train_loader

    def train_loader():
        loaders.append(make_loader())
        return loaders[-1]

    trainer.train_loader = train_loader
    forward_all = trainer._forward_all
    before_eval: List[int] = []

    def first_evaluation(split):  # the peak of everything before predictions are held: data path + training
        if not before_eval:
            before_eval.append(_status_bytes("VmHWM"))
        return forward_all(split)

    trainer._forward_all = first_evaluation
    t = time.perf_counter()
    trainer.fit()
    run = time.perf_counter() - t
    total = time.perf_counter() - start
    loop = trainer.state.train_seconds
    samples = trainer.state.samples
    wait = sum(loader.wait_seconds for loader in loaders)
    return {
        "mode": mode,
        "steps": trainer.state.step,
        "samples": samples,
        "seconds": {
            "fit": phases.get("fit", 0.0),
            "read": phases.get("read", 0.0),
            "setup_other": setup - phases.get("fit", 0.0) - phases.get("read", 0.0),
            "train": loop,
            "eval": run - loop,
            "total": total,
        },
        "loop_samples_per_sec": samples / loop,
        "end_to_end_samples_per_sec": samples / total,
        "end_to_end_ratio": (samples / total) / (samples / loop),
        "loader_wait_share": wait / loop,
        "peak_rss_bytes": _status_bytes("VmHWM"),
        "peak_rss_before_eval_bytes": before_eval[0] if before_eval else None,
    }


def encoder_chunk(vocab_ids: int, chunk: int = 262144, seed: int = 0) -> Dict[str, Any]:
    """Seconds to look one chunk of ``chunk`` ids up in a vocabulary of ``vocab_ids`` integer ids: the old
    per-chunk ``pc.index_in`` against the prebuilt index (and the one-time cost of building it)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from recsys.data.encoding import VocabIndex

    rng = np.random.default_rng(seed)
    vocab = pa.array(rng.permutation(vocab_ids).astype(np.int64) * 7 + 3)
    ids = pa.array(rng.choice(vocab.to_numpy(), chunk))
    t = time.perf_counter()
    before = pc.fill_null(pc.index_in(ids, value_set=vocab), -1)
    old = time.perf_counter() - t
    index = VocabIndex(vocab)
    t = time.perf_counter()
    index.positions(ids[:1])
    build = time.perf_counter() - t
    times = []
    for _ in range(3):
        t = time.perf_counter()
        after = index.positions(ids)
        times.append(time.perf_counter() - t)
    assert (np.asarray(before) == after).all()  # the same rows
    return {
        "vocab_ids": vocab_ids,
        "chunk_ids": chunk,
        "index_in_seconds": old,
        "prebuilt_seconds": min(times),
        "build_seconds": build,
        "speedup": old / min(times),
    }


def history_state(rows: int, users: int, buckets: int, exact_up_to: int, chunk: int = 262144) -> Dict[str, Any]:
    """STAN's label-history state over ``rows`` training events of ``users`` users (skewed activity, timestamps
    spread over 30 days), fed chunk by chunk as ``Dataset`` does: the bounded state (``buckets`` time buckets per
    user) against the exact per-event index (up to ``exact_up_to`` events)."""
    from recsys.data.history import HistoryBuilder, LabelHistory, TimeBuckets

    rng = np.random.default_rng(rows % 1000)
    activity = rng.lognormal(0.0, 1.0, users)
    p = activity / activity.sum()
    day = 86400.0
    sizes = [min(chunk, rows - i) for i in range(0, rows, chunk)]

    def chunks():
        for i, n in enumerate(sizes):
            r = np.random.default_rng([rows, i])
            yield (r.choice(users, n, p=p).astype(np.uint64) + 1, np.floor(r.random(n) * 30 * day), r.random(n) < 0.1)

    t = time.perf_counter()
    time_buckets = TimeBuckets.fit((times for _, times, _ in chunks()), buckets)
    builder = HistoryBuilder(time_buckets, ["ctr"])
    for keys, times, clicks in chunks():
        builder.add(keys, times, {"ctr": (np.ones(len(keys), bool), clicks)})
    bounded = builder.finish()
    out: Dict[str, Any] = {
        "rows": rows,
        "users": users,
        "buckets": buckets,
        "bounded": {"entries": len(bounded), "bytes": bounded.nbytes, "seconds": time.perf_counter() - t},
    }
    if rows <= exact_up_to:
        t = time.perf_counter()
        parts = list(chunks())
        exact = LabelHistory.build(
            np.concatenate([k for k, _, _ in parts]),
            np.concatenate([x for _, x, _ in parts]),
            {"ctr": (np.ones(rows, bool), np.concatenate([c for _, _, c in parts]))},
        )
        out["exact"] = {"entries": len(exact), "bytes": exact.nbytes, "seconds": time.perf_counter() - t}
    return out


def markdown(result: Dict[str, Any]) -> str:
    lines = [
        "## Scale: `recsys train` end to end",
        "",
        environment_markdown(result["environment"]),
        f"Wide&Deep on the synthetic world ({result['ids']:,} users and items at every size), one epoch (or "
        f"the steps shown), default splits (80/10/10), batch {result['batch_size']}; each mode in a fresh "
        "process. Seconds per phase; samples/s of the training "
        "loop and end to end (setup + fit + read + train + eval); peak RSS of the whole process.",
        "",
        "| rows | mode | generate s | fit s | read s | train s | eval s | loop samples/s | end-to-end samples/s "
        "| e2e / loop | loader wait | peak RSS before eval | peak RSS |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size in result["sizes"]:
        for c in size["cells"]:
            s = c["seconds"]
            steps = f" ({c['steps']} steps)" if size.get("max_steps") else ""
            generated = "-" if size.get("generate_seconds") is None else f"{size['generate_seconds']:.0f}"
            lines.append(
                f"| {size['rows']:,}{steps} | {c['mode']} | {generated} | {s['fit']:.1f} | "
                f"{s['read']:.1f} | {s['train']:.1f} | {s['eval']:.1f} | {c['loop_samples_per_sec']:,.0f} | "
                f"{c['end_to_end_samples_per_sec']:,.0f} | {c['end_to_end_ratio']:.2f}x | "
                f"{100 * c['loader_wait_share']:.1f}% | {_gib(c.get('peak_rss_before_eval_bytes'))} | "
                f"{_gib(c['peak_rss_bytes'])} |"
            )
    enc = result.get("encoder")
    if enc:
        lines += [
            "",
            f"Vocabulary lookup of one {enc['chunk_ids']:,}-id chunk at {enc['vocab_ids']:,} ids: "
            f"{enc['index_in_seconds']:.3f} s with the per-chunk `pc.index_in` hash rebuild (before), "
            f"{enc['prebuilt_seconds']:.4f} s with the prebuilt index (after; {enc['speedup']:.0f}x, "
            f"built once in {enc['build_seconds']:.2f} s).",
        ]
    history = result.get("history")
    if history:
        lines += [
            "",
            "Label-history state (STAN; `recsys.data.history`) over training events of "
            f"{history[0]['users']:,} users, {history[0]['buckets']} time buckets per user, fed in 262k-event "
            "chunks, against the exact per-event index:",
            "",
            "| events | bounded entries | bounded MB | build s | exact entries | exact MB |",
            "|---|---|---|---|---|---|",
        ]
        for h in history:
            b, e = h["bounded"], h.get("exact")
            exact = f"{e['entries']:,} | {e['bytes'] / 1e6:,.0f}" if e else "- | -"
            lines.append(
                f"| {h['rows']:,} | {b['entries']:,} | {b['bytes'] / 1e6:,.0f} | {b['seconds']:.1f} | {exact} |"
            )
    runs = result.get("runs")
    if runs:
        lines += [
            "",
            "Runs (sizes were added by later runs): " + "; ".join(f"`{r['command']}` ({r['date']})" for r in runs),
        ]
    notes = result.get("notes")
    if notes:
        lines += [""] + list(notes)
    goals = result.get("goals")
    if goals:
        lines += ["", "Goals:", ""] + [f"- {g}" for g in goals]
    return "\n".join(lines) + "\n"


def _gib(n: Optional[int]) -> str:
    return "-" if n is None else f"{n / 2**30:.2f} GiB"


def goals(result: Dict[str, Any]) -> List[str]:
    """The issue's goals, each with the measured value (or what was not measured)."""
    cells = {(s["rows"], c["mode"]): (s, c) for s in result["sizes"] for c in s["cells"]}
    out = []
    for rows in sorted({r for r, _ in cells}):
        for mode in MODES:
            if (rows, mode) in cells:
                s, c = cells[(rows, mode)]
                limited = " (step-limited)" if s.get("max_steps") else ""
                out.append(
                    f"{rows:,} rows, {mode}{limited}: end to end {c['end_to_end_ratio']:.2f}x of the loop "
                    f"(goal >= 0.75x at 10^7), loader wait {100 * c['loader_wait_share']:.1f}% "
                    "(goal < 5% at 10^7)"
                )
    stream = sorted((r, c["peak_rss_bytes"]) for (r, m), (_, c) in cells.items() if m == "stream")
    if len(stream) >= 2:
        (r0, m0) = stream[0]
        r1, m1 = next(((r, m) for r, m in stream if r == 30_000_000), stream[-1])  # the goal's size when run
        out.append(
            f"streaming peak RSS {m1 / 2**30:.2f} GiB at {r1:,} rows vs {m0 / 2**30:.2f} GiB at {r0:,}: "
            f"{m1 / m0:.2f}x (goal <= 1.2x from 10^6 to 3x10^7)"
        )
    before = sorted(
        (r, c["peak_rss_before_eval_bytes"])
        for (r, m), (_, c) in cells.items()
        if m == "stream" and c.get("peak_rss_before_eval_bytes")
    )
    if len(before) >= 2:
        out.append(
            "streaming peak RSS before evaluation (data path + training): "
            + ", ".join(f"{m / 2**30:.2f} GiB at {r:,}" for r, m in before)
            + f" ({before[-1][1] / before[0][1]:.2f}x from the first to the last)"
        )
    return out


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1e6,1e7", help="comma-separated row counts")
    p.add_argument("--modes", default="memory,stream")
    p.add_argument("--memory-up-to", type=float, default=1e7, help="in-memory mode only up to this many rows")
    p.add_argument("--max-steps-above", default="", help="ROWS:STEPS: step-limited training above ROWS rows")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--ids", type=float, default=1e5, help="users and items of every world (hosts: a tenth)")
    p.add_argument("--encoder-ids", type=float, default=1e7, help="vocabulary size of the lookup timing (0: skip)")
    p.add_argument("--history-rows", default="", help="comma-separated event counts of the label-history timing")
    p.add_argument("--history-buckets", type=int, default=64)
    p.add_argument("--out", default=RESULTS)
    p.add_argument(
        "--append",
        action="store_true",
        help="add these sizes to the sizes of an existing scale.json in --out (each run keeps its command)",
    )
    p.add_argument("--cell", nargs=3, metavar=("DATA", "MODE", "MAX_STEPS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.cell:  # a child process: one run, its JSON on stdout's last line
        data, mode, steps = args.cell
        run_dir = tempfile.mkdtemp(prefix="recsys-scale-run-")
        try:
            print(json.dumps(run_cell(data, mode, run_dir, args.batch_size, int(steps) or None)))
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
        return 0

    from recsys.data.synthetic import generate

    limit_rows, limit_steps = (float(x) for x in args.max_steps_above.split(":")) if args.max_steps_above else (0, 0)
    result: Dict[str, Any] = {
        "environment": environment(),
        "batch_size": args.batch_size,
        "ids": int(args.ids),
        "sizes": [],
    }
    path = os.path.join(args.out, "scale.json")
    if args.append and os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            earlier = json.load(f)
        result["runs"] = earlier.get("runs", [earlier["environment"]]) + [result["environment"]]
        result["sizes"] = earlier["sizes"]
        result.setdefault("encoder", earlier.get("encoder"))
        if earlier.get("history") and not args.history_rows:
            result["history"] = earlier["history"]
    if args.encoder_ids and not args.append:
        result["encoder"] = encoder_chunk(int(args.encoder_ids))
        print(json.dumps(result["encoder"]), flush=True)
    if args.history_rows:
        result["history"] = [
            history_state(int(float(n)), int(args.ids), args.history_buckets, exact_up_to=int(1e7))
            for n in args.history_rows.split(",")
        ]
        print(json.dumps(result["history"]), flush=True)
    for size in (int(float(s)) for s in args.sizes.split(",")):
        tmp = tempfile.mkdtemp(prefix="recsys-scale-")
        try:
            data = os.path.join(tmp, "world")
            t = time.perf_counter()
            generate(world_config(size, int(args.ids)), data, progress=False)
            entry = {
                "rows": size,
                "generate_seconds": time.perf_counter() - t,
                "cells": [],
                "max_steps": int(limit_steps) if limit_rows and size > limit_rows else None,
                "command": result["environment"]["command"],
            }
            for mode in args.modes.split(","):
                if mode == "memory" and size > args.memory_up_to:
                    continue
                cmd = [
                    sys.executable,
                    "-m",
                    "benchmarks.scale",
                    "--batch-size",
                    str(args.batch_size),
                    "--cell",
                    data,
                    mode,
                    str(entry["max_steps"] or 0),
                ]
                out = subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True).stdout
                entry["cells"].append(json.loads(out.strip().splitlines()[-1]))
                print(json.dumps({"rows": size, **entry["cells"][-1]}), flush=True)
            result["sizes"].append(entry)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    result["goals"] = goals(result)
    write_json(path, result)
    md = markdown(result)
    write_text(os.path.join(args.out, "scale.md"), md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
