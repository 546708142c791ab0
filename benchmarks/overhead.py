"""Where recsys's fixed cost per forward goes at world size 1: the stages of torchrec's sharded
EmbeddingBagCollection timed one by one on the Criteo-like workload, beside the bare FBGEMM kernel with and without
its bounds check.

    python -m benchmarks.overhead --threads 1                      # batches 64, 1024, 4096; dnn; tables <= 10^6
    python -m benchmarks.overhead --batch-sizes 64 --vocab-cap 100000 --out /tmp/ov

Stages, per forward under ``no_grad`` (median over ``--repeats`` rounds of ``--steps`` forwards, CPU time):
    model          the whole DMP forward (TrainModule: model + loss), as evaluation runs it
    input_dist     ShardedEmbeddingBagCollection.input_dist(...).wait().wait(): the KJT's splits and all-to-all
                   (one rank: no data moves, the awaitables and the recat permutation remain)
    lookup         the sharded module's lookups (torchrec's grouped lookup around FBGEMM's TBE)
    output_dist    compute_and_output_dist(...).wait() minus lookup: the pooled all-to-all and KeyedTensor assembly
    kernel         the bare TBE forward on the same ids with the bounds check the path uses (``fatal``)
    bounds_check   that kernel's time minus the same kernel's without the check (``none``)
Results: ``<out>/overhead_cpu.{json,md,png}`` (the plot drawn by benchmarks/plots.py).
"""

import argparse
import copy
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from fbgemm_gpu.split_table_batched_embeddings_ops_common import BoundsCheckMode
from torchrec.distributed.embeddingbag import ShardedEmbeddingBagCollection

from benchmarks.common import RESULTS, environment, environment_markdown, write_json, write_text
from benchmarks.kernels import kernel_inputs, make_tbe, table_groups
from benchmarks.workloads import CriteoWorkload
from recsys.config import ModelConfig, ShardingConfig, TrainConfig
from recsys.console import setup_logging
from recsys.models import build_model
from recsys.modules.sparse import SparseArch
from recsys.train.assembly import assemble
from recsys.train.dist import init_distributed

STAGES = ("model", "input_dist", "lookup", "output_dist", "kernel", "bounds_check")


def _cpu_ms(fn: Callable[[], Any], steps: int) -> float:
    """CPU milliseconds per call of ``fn`` over ``steps`` calls."""
    t = time.process_time()
    for _ in range(steps):
        fn()
    return 1e3 * (time.process_time() - t) / steps


def measure(model_name: str, batch_size: int, vocab_cap: int, steps: int, repeats: int) -> Dict[str, Any]:
    """Median CPU ms per forward of every stage in :data:`STAGES` for one batch size (rounds interleaved)."""
    wl = CriteoWorkload(vocab_cap, dim=16, hot=1)
    batch = wl.batches(batch_size, 1, seed=0)[0]
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=model_name, params={}), wl.schema, source="benchmark")
    arch = next(m for m in copy.deepcopy(model).modules() if isinstance(m, SparseArch))
    setup = assemble(model, model.schema, TrainConfig(), ShardingConfig(), torch.device("cpu"), batch_size)
    dmp = setup.dmp.eval()
    with torch.no_grad():
        return _time_stages(dmp, batch, arch, batch_size, steps, repeats)


def _time_stages(
    dmp: torch.nn.Module, batch: Any, arch: SparseArch, batch_size: int, steps: int, repeats: int
) -> Dict[str, Any]:
    sebc = next(m for m in dmp.modules() if isinstance(m, ShardedEmbeddingBagCollection))
    kjt = batch.sparse
    dist_input = sebc.input_dist(sebc.create_context(), kjt).wait().wait()
    ((mode, cfgs),) = table_groups(arch)  # the Criteo-like tables: one sum-pooled kernel
    kernels = {
        check: make_tbe(cfgs, mode, 0.05, 1e-8, check, torch.device("cpu"))
        for check in (BoundsCheckMode.FATAL, BoundsCheckMode.NONE)
    }
    inputs = kernel_inputs(kjt, kernels[BoundsCheckMode.FATAL][1])

    def input_dist() -> None:
        sebc.input_dist(sebc.create_context(), kjt).wait().wait()

    def lookup() -> None:
        for lk, features in zip(sebc._lookups, dist_input):
            lk(features)

    def dist_and_lookup() -> None:
        ctx = sebc.create_context()
        sebc.input_dist(ctx, kjt).wait().wait()
        sebc.compute_and_output_dist(ctx, dist_input).wait()

    fns: Dict[str, Callable[[], Any]] = {
        "model": lambda: dmp(batch),
        "input_dist": input_dist,
        "lookup": lookup,
        "dist_and_lookup": dist_and_lookup,
        "kernel": lambda: kernels[BoundsCheckMode.FATAL][0](*inputs),
        "kernel_unchecked": lambda: kernels[BoundsCheckMode.NONE][0](*inputs),
    }
    for fn in fns.values():  # warm up
        fn()
    rounds: Dict[str, List[float]] = {n: [] for n in fns}
    names = list(fns)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            rounds[name].append(_cpu_ms(fns[name], steps))
    med = {n: float(np.median(v)) for n, v in rounds.items()}
    return {
        "batch_size": batch_size,
        "ms": {
            "model": med["model"],
            "input_dist": med["input_dist"],
            "lookup": med["lookup"],
            "output_dist": med["dist_and_lookup"] - med["input_dist"] - med["lookup"],
            "kernel": med["kernel"],
            "bounds_check": med["kernel"] - med["kernel_unchecked"],
        },
        "rounds_ms": rounds,
    }


def markdown(result: Dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        "## Fixed cost per forward of the recsys path (world size 1)",
        "",
        environment_markdown(result["environment"]),
        f"{s['model']} on the Criteo-like one-hot workload (tables capped at {s['vocab_cap']:,} rows), forward "
        f"under no_grad; CPU ms per forward, median over {s['repeats']} interleaved rounds of {s['steps']} "
        "forwards (benchmarks/overhead.py explains the stages).",
        "",
        "| batch | " + " | ".join(STAGES) + " | torchrec around the kernel (input_dist + lookup - kernel + "
        "output_dist) |",
        "|---|" + "---|" * (len(STAGES) + 1),
    ]
    for c in result["batches"]:
        ms = c["ms"]
        around = ms["input_dist"] + ms["lookup"] - ms["kernel"] + ms["output_dist"]
        lines.append(f"| {c['batch_size']} | " + " | ".join(f"{ms[k]:.3f}" for k in STAGES) + f" | {around:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.overhead",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="dnn")
    p.add_argument("--batch-sizes", default="64,1024,4096")
    p.add_argument("--vocab-cap", type=int, default=1_000_000)
    p.add_argument("--steps", type=int, default=50, help="forwards per round")
    p.add_argument("--repeats", type=int, default=7, help="interleaved rounds")
    p.add_argument("--threads", type=int, help="torch intra-op threads")
    p.add_argument("--out", default=RESULTS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    setup_logging()
    init_distributed("cpu")
    cells = [
        measure(args.model, int(b), args.vocab_cap, args.steps, args.repeats) for b in args.batch_sizes.split(",") if b
    ]
    result = {
        "environment": environment(),
        "load_average": list(os.getloadavg()),
        "settings": {"model": args.model, "vocab_cap": args.vocab_cap, "steps": args.steps, "repeats": args.repeats},
        "stages": list(STAGES),
        "batches": cells,
    }
    write_json(os.path.join(args.out, "overhead_cpu.json"), result)
    md = markdown(result)
    from benchmarks.plots import overhead_figure, save

    save(overhead_figure(result), os.path.join(args.out, "overhead_cpu.png"))
    md += "\n![overhead_cpu.png](overhead_cpu.png)\n"
    write_text(os.path.join(args.out, "overhead_cpu.md"), md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
