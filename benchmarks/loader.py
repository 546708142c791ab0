"""Data path throughput: Parquet -> Batch rows/s against the training step rate on the same machine and data.

    python -m benchmarks.loader [--rows 2000000] [--batch-size 4096] [--repeats 3]

Measured (medians over repeats, with min/max):
    fit         one validation + vocabulary-fitting pass over the files
    read        Parquet -> encoded columns in memory (the in-memory path, once per run)
    batches     encoded columns -> shuffled Batch objects (the in-memory path, every epoch)
    stream      Parquet -> shuffled Batch objects (the streaming path for data larger than memory)
    train       Wide&Deep training steps (DMP + fused FBGEMM TBE) on batches already in memory
    train_from_parquet / train_from_memory: end-to-end training samples/s in streaming vs in-memory mode

The loader must not be the bottleneck: ``stream`` and ``batches`` should be at least 10x ``train``.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
from typing import Callable, Dict, List

import numpy as np

from benchmarks.common import RESULTS, environment, environment_markdown, write_json, write_text

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the measured stages (keys of ``rows_per_sec`` in loader.json) as the table and the plot name them
STAGES = {
    "fit": "fit (validate + fit vocabularies)",
    "read": "read: Parquet -> encoded columns",
    "batches": "batches: columns -> shuffled Batch",
    "stream": "stream: Parquet -> shuffled Batch",
}


def timed(fn: Callable[[], int], repeats: int) -> Dict[str, float]:
    """rows/s of ``fn`` (which returns rows processed): median, min and max over repeats (after a warm-up)."""
    fn()
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        rows = fn()
        rates.append(rows / (time.perf_counter() - t))
    return {"median": float(np.median(rates)), "min": float(np.min(rates)), "max": float(np.max(rates))}


def train_rate(data: str, batch_size: int, in_memory: bool, steps: int, run_dir: str) -> float:
    """Training samples/s of Wide&Deep over ``steps`` steps (after 5 warm-up steps)."""
    from recsys.config import load_config
    from recsys.train.trainer import Trainer

    cfg = load_config(
        os.path.join(REPO, "configs", "wide_deep_synthetic.yaml"),
        [
            f"data.path={data}",
            f"run_dir={run_dir}",
            f"data.batch_size={batch_size}",
            "train.progress=false",
            "tensorboard=false",
            f"data.in_memory={str(in_memory).lower()}",
            "train.pipeline=plain",
        ],
    )
    trainer = Trainer(cfg)
    loader = trainer.train_loader()
    it = trainer.stepper.steps(loader)
    for _ in range(5):
        next(it)
    t = time.perf_counter()
    done = 0
    for out in it:
        done += out.batch.size
        if done >= steps * batch_size:
            break
    rate = done / (time.perf_counter() - t)
    shutil.rmtree(run_dir, ignore_errors=True)
    return rate


def main(argv: List[str] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.loader", description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--train-steps", type=int, default=60)
    p.add_argument("--out", default=RESULTS)
    args = p.parse_args(argv)

    from recsys.console import setup_logging
    from recsys.data.dataset import Dataset
    from recsys.data.loader import BatchLoader
    from recsys.data.spec import load_spec
    from recsys.data.synthetic import WorldConfig, generate

    setup_logging()
    tmp = tempfile.mkdtemp(prefix="recsys-loader-")
    try:
        data = os.path.join(tmp, "world")
        world = WorldConfig(
            rows=args.rows,
            users=max(args.rows // 100, 1000),
            hosts=max(args.rows // 1000, 100),
            items=max(args.rows // 200, 500),
            rows_per_file=500_000,
        )
        generate(world, data, progress=False)
        spec = load_spec(os.path.join(REPO, "configs", "datasets", "synthetic.yaml"))
        ds = Dataset(spec, root=data)

        def fit() -> int:
            ds.fit()
            return args.rows

        fit_rate = timed(fit, args.repeats)
        parts: Dict = {}

        def read() -> int:
            parts.update(ds.read())
            return args.rows

        read_rate = timed(read, args.repeats)
        names = ds.schema().feature_names
        train = parts["train"]

        def batches() -> int:
            loader = BatchLoader(train, names, args.batch_size, shuffle=True, drop_last=True, prefetch=0)
            return sum(b.size for b in loader)

        def stream() -> int:
            loader = BatchLoader(
                lambda: ds.stream("train"), names, args.batch_size, shuffle=True, drop_last=True, prefetch=0
            )
            return sum(b.size for b in loader)

        batch_rate = timed(batches, args.repeats)
        stream_rate = timed(stream, args.repeats)
        train_mem = train_rate(data, args.batch_size, True, args.train_steps, os.path.join(tmp, "run-mem"))
        train_parquet = train_rate(data, args.batch_size, False, args.train_steps, os.path.join(tmp, "run-pq"))
        steps = {"train": train_mem}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    env = environment()
    result = {
        "environment": env,
        "rows": args.rows,
        "batch_size": args.batch_size,
        "features": {"sparse": len(names), "dense": len(spec.dense), "tasks": len(spec.tasks)},
        "rows_per_sec": {"fit": fit_rate, "read": read_rate, "batches": batch_rate, "stream": stream_rate},
        "train_samples_per_sec": {"from_memory": train_mem, "from_parquet": train_parquet},
        "ratio_to_training": {
            "batches": batch_rate["median"] / steps["train"],
            "stream": stream_rate["median"] / steps["train"],
        },
    }
    rows = [(STAGES[key], rate) for key, rate in result["rows_per_sec"].items()]
    lines = [
        "## Data path throughput",
        "",
        environment_markdown(env),
        f"Synthetic world: {args.rows:,} rows, {len(names)} sparse features (one multi-hot), {len(spec.dense)} dense, "
        f"{len(spec.tasks)} labels; batch {args.batch_size}; median (min-max) of {args.repeats} repeats.",
        "",
        "| stage | rows/s | x training step rate |",
        "|---|---|---|",
    ]
    for name, r in rows:
        lines.append(
            f"| {name} | {r['median']:,.0f} ({r['min']:,.0f}-{r['max']:,.0f}) | {r['median'] / train_mem:.1f}x |"
        )
    lines += [
        f"| train: Wide&Deep steps (DMP + fused TBE), batches in memory | {train_mem:,.0f} | 1.0x |",
        "",
        f"End-to-end training: {train_mem:,.0f} samples/s from memory, {train_parquet:,.0f} samples/s streaming "
        "from Parquet (the loader runs in a background thread).",
    ]
    lines += ["", "![loader.png](loader.png)"]
    md = "\n".join(lines) + "\n"
    write_json(os.path.join(args.out, "loader.json"), result)
    from benchmarks.plots import loader_figure, save

    save(loader_figure(result), os.path.join(args.out, "loader.png"))
    write_text(os.path.join(args.out, "loader.md"), md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
