"""Training and inference throughput: recsys's fused TorchRec path beside the best plain-PyTorch practice, the
dense-gradient tables common CTR libraries use, and the same model on bare FBGEMM kernels, for the same model on
the same batches, measured side by side in one process.

    python -m benchmarks.throughput --device cpu --threads 1   # the default grid on 1 thread
    python -m benchmarks.throughput --device cuda              # on a GPU: TrainPipelineSparseDist, batches 16k-64k
    python -m benchmarks.throughput --quick --out /tmp/tp      # tiny sizes: checks the harness works

Paths timed for every (workload, model, batch size) cell (docs/benchmarks.md explains each):
    recsys   the registry model in TrainModule, embedding optimizer fused (row-wise Adagrad applied in backward),
             DistributedModelParallel with the planner's plan (FBGEMM TBE), dense Adam through build_optimizer;
             stepped exactly as the trainer steps: plain loop on CPU, TrainPipelineSparseDist on GPU.
    recsys_unchecked  the recsys path with FBGEMM's bounds check off (sharding.bounds_check=none): what the
             check costs per step.
    sparse   the headline peer, plain PyTorch done well: one nn.EmbeddingBag(sparse=True) per table (a step's
             gradient holds the batch's rows only) with sparse torch.optim.Adagrad, fused Adam for the dense part.
    dense    what common CTR libraries do: nn.Embedding (nn.EmbeddingBag for multi-hot) per table with dense
             gradients, fused torch.optim.Adam over every row of every table.
    tbe_mlp  the same model with its tables in bare FBGEMM table-batched kernels (row-wise Adagrad fused into
             their backward) inside one module, fed the batch's ids directly, fused Adam for the dense part: recsys
             without any torchrec module, distribution or DMP around the kernel (benchmarks/plain.py).
    tbe      the bare kernels alone (precomputed inputs, fixed output gradient): the lookup's bandwidth.
    mlp      the same model with fixed pooled vectors instead of lookups: MLPs, loss and Adam only.

Each path is timed in ``--repeats`` interleaved rounds (the path order rotates every round, so a slow spell of
a shared machine hits every path alike); a round runs whole steps for at least ``--min-time`` seconds after
``--warmup`` steps. Reported per path: median wall samples/s with min/max and quartiles over rounds, samples per
CPU-second of this process (all its threads) beside them, ratios as the median of per-round ratios (paired, so
contention cancels) with their min/max, recsys's overhead per step over tbe_mlp (ms), the peak memory each path
adds (benchmarks/memory.py) and the load average; the goals of issue 20 are checked in the report. Results:
``<out>/throughput_<device>.{json,md}`` and PNG plots beside them.
"""

import argparse
import copy
import dataclasses
import itertools
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from benchmarks.common import RESULTS, environment, environment_markdown, write_json, write_text
from benchmarks.kernels import BareTbe, hbm_peak
from benchmarks.memory import PeakMemory, release
from benchmarks.plain import TbeSparseArch, mlp_twin, plain_twin, tbe_twin
from benchmarks.workloads import CriteoWorkload, LiveWorkload, Workload
from recsys.config import EmbeddingOptimizerConfig, ModelConfig, OptimizerConfig, ShardingConfig, TrainConfig
from recsys.console import is_terminal, setup_logging
from recsys.models import build_model, model_names
from recsys.modules.sparse import SparseArch
from recsys.train.assembly import Stepper, assemble
from recsys.train.dist import init_distributed
from recsys.train.losses import MultiTaskLoss, TrainModule
from recsys.train.sharding import BOUNDS_CHECK

log = logging.getLogger("benchmarks.throughput")

PATHS = ("recsys", "sparse", "dense", "tbe_mlp", "recsys_unchecked", "tbe", "mlp")
# timed unless --paths says otherwise: the bare kernel's bandwidth matters on a GPU (HBM fraction)
DEFAULT_PATHS = {
    "cpu": ("recsys", "sparse", "dense", "tbe_mlp", "recsys_unchecked"),
    "cuda": ("recsys", "sparse", "dense", "tbe_mlp", "recsys_unchecked", "tbe"),
}
# the paths trained by a plain eager loop over a twin of the model (benchmarks/plain.py)
EAGER = ("sparse", "dense", "tbe_mlp", "mlp")
# batch size at which the fixed overhead per step / forward is read (the kernels and MLPs are cheap there)
OVERHEAD_BATCH = 64


@dataclass(frozen=True)
class Goal:
    """A target of issue 20 on the headline workload (Criteo-like one-hot, first model).

    Args:
        key: the cell's derived value (a ratio in ``ratios`` or an overhead in ``overhead_ms``).
        batch_size: the cell's batch size.
        target: the value to reach.
        at_most: the value must stay at or below ``target`` (an overhead) instead of reaching it.
        text: what the goal says, in words.
    """

    key: str
    batch_size: int
    target: float
    at_most: bool
    text: str


GOALS = (
    Goal("recsys_over_sparse_train", 4096, 1.5, False, "training >= 1.5x sparse-EmbeddingBag plain PyTorch"),
    Goal("recsys_over_tbe_mlp_train", 4096, 0.97, False, "training >= 0.97x the one-module TBE + MLP path"),
    Goal("recsys_over_tbe_mlp_train", 1024, 0.9, False, "training >= 0.9x the one-module TBE + MLP path"),
    Goal("recsys_over_sparse_infer", 4096, 1.1, False, "inference >= 1.1x plain sparse PyTorch"),
    Goal("overhead_infer", OVERHEAD_BATCH, 0.15, True, "fixed overhead per forward <= 0.15 ms over tbe_mlp"),
)


@dataclass
class Settings:
    """How every cell is measured (one object for the whole run).

    Args:
        device: ``cpu`` or ``cuda``.
        pipeline: step the recsys path with TrainPipelineSparseDist (the trainer does on GPU).
        paths: which of :data:`PATHS` to time (``recsys`` first when the ratios are wanted).
        repeats: interleaved timing rounds per path.
        warmup: untimed steps before timing (the first creates optimizer state).
        min_time: seconds each path runs per round (whole steps, at least one).
        batches: distinct batches per cell, cycled.
        plain_max_gb: skip the dense path when its tables, gradients and Adam moments would exceed this.
        inference: also time forward-only steps.
        seed: model initialisation and data.
    """

    device: torch.device
    pipeline: bool
    paths: Sequence[str] = DEFAULT_PATHS["cpu"]
    repeats: int = 5
    warmup: int = 3
    min_time: float = 1.5
    batches: int = 4
    plain_max_gb: float = 6.0
    inference: bool = True
    seed: int = 0


@dataclass
class Cell:
    """One measurement: a model on a workload at a batch size (``tag`` groups cells in the tables)."""

    tag: str
    workload: Workload
    model: str
    batch_size: int


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def table_weights(dmp: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """Table name -> full weight of every embedding table of a single-process DMP (table-wise shards)."""
    out = {}
    for key, value in dmp.state_dict().items():
        if ".embedding_bags." in key and key.endswith(".weight"):
            name = key.split(".embedding_bags.")[1][: -len(".weight")]
            shards = value.local_shards() if hasattr(value, "local_shards") else None
            out[name] = (shards[0].tensor if shards else value).detach()
    return out


class RecsysPath:
    """The real recsys training set-up (what :class:`recsys.train.trainer.Trainer` builds), stepped the way the
    trainer steps it.

    Args:
        model: a registry model (its EBC on the meta device).
        batches: CPU batches, cycled.
        settings: device and pipeline choice.
        batch_size: the planner's batch size.
        embedding_optimizer, sharding: the run config's sections (defaults: the trainer's defaults).
    """

    name = "recsys"

    def __init__(
        self,
        model: torch.nn.Module,
        batches: List[Any],
        settings: Settings,
        batch_size: int,
        embedding_optimizer: Optional[EmbeddingOptimizerConfig] = None,
        sharding: Optional[ShardingConfig] = None,
    ) -> None:
        self.device = settings.device
        train = TrainConfig(embedding_optimizer=embedding_optimizer or EmbeddingOptimizerConfig())
        self.setup = assemble(model, model.schema, train, sharding or ShardingConfig(), self.device, batch_size)
        self.dmp, self.optimizer = self.setup.dmp, self.setup.optimizer
        if self.device.type == "cuda":
            batches = [b.pin_memory() for b in batches]
        self._it = itertools.cycle(batches)
        # the trainer's own stepper: the plain loop or TrainPipelineSparseDist, as the run config chooses
        self.stepper = Stepper(self.setup, self.device, pipeline=settings.pipeline)
        self._steps = self.stepper.steps(self._it)

    def train_step(self) -> None:
        next(self._steps)

    def eval_mode(self) -> None:
        self.stepper.detach()
        self.dmp.eval()

    @torch.no_grad()
    def infer_step(self) -> None:
        # what the trainer's evaluation runs per batch (recsys.train.assembly.eval_batches)
        self.dmp(next(self._it).to(self.device, non_blocking=True))


class EagerPath:
    """A plain-PyTorch training loop over a twin of the model (see :data:`EAGER`): batches already on the device,
    the same loss module, each parameter with the optimizer the path prescribes.

    * ``dense`` / ``mlp``: fused ``torch.optim.Adam`` over every parameter (tables included for ``dense``);
    * ``sparse``: sparse ``torch.optim.Adagrad`` (the recsys path's learning rate and eps) over the
      ``nn.EmbeddingBag(sparse=True)`` tables, fused Adam over the rest;
    * ``tbe_mlp``: fused Adam over the dense part; the kernels update their rows in their own backward.

    Args:
        name: one of :data:`EAGER`.
        twin: the model twin (see :mod:`benchmarks.plain`).
        batches: batches already on ``device``, cycled.
        device: where to run.
        embedding_optimizer: the recsys path's embedding optimizer settings (for ``sparse``'s Adagrad).
    """

    def __init__(
        self,
        name: str,
        twin: torch.nn.Module,
        batches: List[Any],
        device: torch.device,
        embedding_optimizer: Optional[EmbeddingOptimizerConfig] = None,
    ) -> None:
        self.name = name
        self.device = device
        self.module = TrainModule(twin, MultiTaskLoss(twin.schema, None, twin.dependent_loss)).to(device)
        emb = embedding_optimizer or EmbeddingOptimizerConfig()
        tables = {id(p) for m in self.module.modules() if isinstance(m, SparseArch) for p in m.parameters()}
        kernels = {id(p) for m in self.module.modules() if isinstance(m, TbeSparseArch) for p in m.parameters()}
        dense = [
            p for p in self.module.parameters() if id(p) not in kernels and (name != "sparse" or id(p) not in tables)
        ]
        # the fastest stock Adam (fused kernels on CPU since torch 2.4 and on CUDA): a strong baseline
        self.optimizers: List[torch.optim.Optimizer] = [torch.optim.Adam(dense, lr=OptimizerConfig().lr, fused=True)]
        if name == "sparse":
            sparse = [p for p in self.module.parameters() if id(p) in tables]
            self.optimizers.append(torch.optim.Adagrad(sparse, lr=emb.lr, eps=emb.eps))
        self._it = itertools.cycle(batches)

    def train_step(self) -> None:
        batch = next(self._it)
        for opt in self.optimizers:
            opt.zero_grad()
        loss, _ = self.module(batch)
        loss.backward()
        for opt in self.optimizers:
            opt.step()

    def eval_mode(self) -> None:
        self.module.eval()

    @torch.no_grad()
    def infer_step(self) -> None:
        self.module(next(self._it))


class TbePath:
    """The bare kernels (see :class:`benchmarks.kernels.BareTbe`) on the model's tables.

    Args:
        arch: the model's SparseArch.
        batches: batches whose KJTs become kernel inputs (outside the timed region).
        settings: device.
        lr, eps, bounds_check: those of the recsys path.
    """

    name = "tbe"

    def __init__(
        self, arch: Any, batches: List[Any], settings: Settings, lr: float, eps: float, bounds_check: Any
    ) -> None:
        self.kernels = BareTbe(arch, lr, eps, bounds_check, settings.device)
        self.inputs = [self.kernels.prepare(b.sparse) for b in batches]
        self._it = itertools.cycle(self.inputs)

    @property
    def bytes_per_step(self) -> Dict[str, float]:
        return {
            "forward": float(np.mean([i.forward_bytes for i in self.inputs])),
            "backward": float(np.mean([i.backward_bytes for i in self.inputs])),
        }

    def train_step(self) -> None:
        self.kernels.train_step(next(self._it))

    def eval_mode(self) -> None:
        pass

    def infer_step(self) -> None:
        self.kernels.infer_step(next(self._it))


def plain_bytes(schema: Any) -> int:
    """Bytes the dense path holds for its main tables: fp32 weights, dense gradients and two Adam moments
    (wide tables, 4 columns each, are left out of this estimate)."""
    elements = {f.table_name: f.num_embeddings * f.embedding_dim for f in schema.sparse}
    return 4 * 4 * sum(elements.values())


def _stats(rates: List[float]) -> Dict[str, Any]:
    a = np.asarray(rates, dtype=float)
    return {
        "median": float(np.median(a)),
        "min": float(a.min()),
        "max": float(a.max()),
        "q1": float(np.percentile(a, 25)),
        "q3": float(np.percentile(a, 75)),
        "rounds": [float(x) for x in a],
    }


def _time_rounds(
    paths: Dict[str, Any], step: str, batch_size: int, settings: Settings, steps: Dict[str, int]
) -> Dict[str, Dict[str, Any]]:
    """Wall samples/s per path over interleaved rounds (the order rotates every round), each with its samples per
    CPU-second of this process (``per_cpu_second``: contention that steals the core shows in the wall rate only)."""
    names = list(paths)
    wall: Dict[str, List[float]] = {n: [] for n in names}
    cpu: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(settings.repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            fn: Callable[[], None] = getattr(paths[name], step)
            _sync(settings.device)
            t, c = time.perf_counter(), time.process_time()
            for _ in range(steps[name]):
                fn()
            _sync(settings.device)
            samples = steps[name] * batch_size
            wall[name].append(samples / (time.perf_counter() - t))
            cpu[name].append(samples / max(time.process_time() - c, 1e-9))
    return {n: dict(_stats(wall[n]), per_cpu_second=_stats(cpu[n])) for n in names}


def _steps_per_round(fn: Callable[[], None], settings: Settings) -> int:
    """Steps filling ``min_time`` seconds, from the faster of two timed steps (after warm-up)."""
    times = []
    for _ in range(2):
        _sync(settings.device)
        t = time.perf_counter()
        fn()
        _sync(settings.device)
        times.append(time.perf_counter() - t)
    return int(min(100_000, max(1, math.ceil(settings.min_time / max(min(times), 1e-6)))))


def _paired_ratio(a: Dict[str, Any], b: Dict[str, Any]) -> Dict[str, float]:
    r = np.asarray(a["rounds"]) / np.asarray(b["rounds"])
    return {"median": float(np.median(r)), "min": float(r.min()), "max": float(r.max())}


def _overhead_ms(a: Dict[str, Any], b: Dict[str, Any], batch_size: int) -> Dict[str, float]:
    """Milliseconds per step ``a`` spends beyond ``b`` (paired by round): ``batch * (1/a - 1/b)``."""
    d = 1e3 * batch_size * (1.0 / np.asarray(a["rounds"]) - 1.0 / np.asarray(b["rounds"]))
    return {"median": float(np.median(d)), "min": float(d.min()), "max": float(d.max())}


def _build_path(
    name: str,
    model: torch.nn.Module,
    base: torch.nn.Module,
    batches: List[Any],
    on_device: List[Any],
    settings: Settings,
    batch_size: int,
    weights: Optional[Dict[str, torch.Tensor]],
) -> Any:
    """One path of a cell. ``model`` goes to recsys (DMP takes it over); the twins start from ``base``'s dense
    weights and the recsys path's table weights ``weights`` (when it was built first)."""
    embedding_optimizer, sharding = EmbeddingOptimizerConfig(), ShardingConfig()  # the trainer's defaults
    bounds_check = BOUNDS_CHECK[sharding.bounds_check]
    dev = settings.device
    if name == "recsys":
        return RecsysPath(model, batches, settings, batch_size, embedding_optimizer, sharding)
    if name == "recsys_unchecked":
        unchecked = dataclasses.replace(sharding, bounds_check="none")
        return RecsysPath(copy.deepcopy(base), batches, settings, batch_size, embedding_optimizer, unchecked)
    if name == "tbe":
        arch = next(m for m in base.modules() if isinstance(m, SparseArch))
        return TbePath(arch, batches, settings, embedding_optimizer.lr, embedding_optimizer.eps, bounds_check)
    twins = {
        "sparse": lambda: plain_twin(base, weights, dev, sparse=True),
        "dense": lambda: plain_twin(base, weights, dev, sparse=False),
        "tbe_mlp": lambda: tbe_twin(base, embedding_optimizer.lr, embedding_optimizer.eps, bounds_check, weights, dev),
        "mlp": lambda: mlp_twin(base, batch_size, dev),
    }
    return EagerPath(name, twins[name](), on_device, dev, embedding_optimizer)


def run_cell(cell: Cell, settings: Settings) -> Dict[str, Any]:
    """Build every path for ``cell``, warm up, time training (and inference) in interleaved rounds."""
    wl, b = cell.workload, cell.batch_size
    batches = wl.batches(b, settings.batches, seed=settings.seed)
    # the eager paths get their batches on the device before anything is timed or measured
    on_device = [x.to(settings.device) for x in batches] if settings.device.type == "cuda" else batches
    torch.manual_seed(settings.seed)
    model = build_model(ModelConfig(name=cell.model, params={}), wl.schema, source="benchmark")
    base = copy.deepcopy(model)  # before DMP takes the original over: the twins share its dense initial weights
    paths: Dict[str, Any] = {}
    memory: Dict[str, Any] = {}
    skipped: Dict[str, str] = {}
    steps: Dict[str, int] = {}
    weights: Optional[Dict[str, torch.Tensor]] = None
    for name in settings.paths:
        if name == "dense" and plain_bytes(wl.schema) > settings.plain_max_gb * 1024**3:
            skipped[name] = (
                f"needs ~{plain_bytes(wl.schema) / 1024**3:.1f} GB (tables, dense gradients, Adam "
                f"moments) > --plain-max-gb {settings.plain_max_gb}"
            )
            continue
        with PeakMemory(settings.device) as mem:
            path = _build_path(name, model, base, batches, on_device, settings, b, weights)
            if name == "recsys":
                weights = table_weights(path.dmp)
            for _ in range(settings.warmup):
                path.train_step()
            _sync(settings.device)
        paths[name] = path
        memory[name] = mem.result()
        steps[name] = _steps_per_round(path.train_step, settings)
    weights = None
    out: Dict[str, Any] = {
        "train": _time_rounds(paths, "train_step", b, settings, steps),
        "memory": memory,
        "steps_per_round": {"train": steps},
        "skipped": skipped,
    }
    if settings.inference:
        for p in paths.values():
            p.eval_mode()
            p.infer_step()
        isteps = {n: _steps_per_round(p.infer_step, settings) for n, p in paths.items()}
        out["infer"] = _time_rounds(paths, "infer_step", b, settings, isteps)
        out["steps_per_round"]["infer"] = isteps
    if "tbe" in paths:
        out["tbe_bytes_per_step"] = paths["tbe"].bytes_per_step
    out.update(derived(out, b, torch.cuda.get_device_name() if settings.device.type == "cuda" else None))
    return out


def derived(out: Dict[str, Any], batch_size: int, gpu_name: Optional[str]) -> Dict[str, Any]:
    """Ratios of recsys to every other path, recsys's overhead per step over tbe_mlp and the lookup's achieved
    bandwidth from a cell's timings.

    Args:
        out: the cell's ``train`` (and ``infer``) timings, and ``tbe_bytes_per_step`` when the bare kernel ran.
        batch_size: samples per step.
        gpu_name: the CUDA device's name (for its HBM peak), None on CPU.

    Returns: ``ratios`` (``recsys_over_<path>_<phase>``: median / min / max of the per-round wall ratios),
    ``overhead_ms`` (``<phase>``: wall ms per step recsys spends beyond tbe_mlp), ``bounds_check_ms`` (beyond
    recsys_unchecked), the same from CPU time (``ratios_per_cpu_second``, ``overhead_cpu_ms``,
    ``bounds_check_cpu_ms``) and ``tbe_bandwidth``.
    """
    d: Dict[str, Any] = {"ratios": {}, "ratios_per_cpu_second": {}, "overhead_ms": {}, "overhead_cpu_ms": {}}
    for phase in ("train", "infer"):
        timed = out.get(phase, {})
        if "recsys" not in timed:
            continue
        cpu = {p: t["per_cpu_second"] for p, t in timed.items() if "per_cpu_second" in t}
        for other in timed:
            if other != "recsys":
                d["ratios"][f"recsys_over_{other}_{phase}"] = _paired_ratio(timed["recsys"], timed[other])
                if "recsys" in cpu and other in cpu:
                    d["ratios_per_cpu_second"][f"recsys_over_{other}_{phase}"] = _paired_ratio(
                        cpu["recsys"], cpu[other]
                    )
        for key, other in (("", "tbe_mlp"), ("bounds_check_", "recsys_unchecked")):
            if other in timed:
                d.setdefault(f"{key or 'overhead_'}ms", {})[phase] = _overhead_ms(
                    timed["recsys"], timed[other], batch_size
                )
                if "recsys" in cpu and other in cpu:
                    d.setdefault(f"{key or 'overhead_'}cpu_ms", {})[phase] = _overhead_ms(
                        cpu["recsys"], cpu[other], batch_size
                    )
    train = out["train"]
    if "tbe_bytes_per_step" in out and "tbe" in train:
        per_step = out["tbe_bytes_per_step"]["forward"] + out["tbe_bytes_per_step"]["backward"]
        achieved = per_step * train["tbe"]["median"] / batch_size
        bw: Dict[str, Any] = {"bytes_per_step": per_step, "bytes_per_s": achieved}
        if gpu_name:
            peak = hbm_peak(gpu_name)
            bw.update({"hbm_peak_bytes_per_s": peak, "fraction_of_hbm_peak": achieved / peak})
        d["tbe_bandwidth"] = bw
    return d


def goal_status(result: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Each of :data:`GOALS` against the first Criteo-like one-hot model's cell at the goal's batch size:
    ``goal``, ``batch_size``, ``target``, ``measured`` (median of the paired wall-clock values; None when the cell
    did not run) and ``met``, and the same from CPU time (``measured_cpu``, ``met_cpu``)."""
    sweep = [c for c in _cells_of(result, "batch") if "train" in c]
    first = sweep[0]["model"] if sweep else None
    rows = []
    for g in GOALS:
        cell = next((c for c in sweep if c["model"] == first and c["batch_size"] == g.batch_size), None)
        phase = g.key.rsplit("_", 1)[1]
        row = {
            "goal": g.text,
            "key": g.key,
            "model": first,
            "batch_size": g.batch_size,
            "target": g.target,
            "at_most": g.at_most,
        }
        for suffix, ratios, overhead in (
            ("", "ratios", "overhead_ms"),
            ("_cpu", "ratios_per_cpu_second", "overhead_cpu_ms"),
        ):
            value = None
            if cell is not None:
                value = (
                    cell.get(overhead, {}).get(phase)
                    if g.key.startswith("overhead")
                    else cell.get(ratios, {}).get(g.key)
                )
            measured = value["median"] if value else None
            row["measured" + suffix] = measured
            row["met" + suffix] = (
                None if measured is None else (measured <= g.target if g.at_most else measured >= g.target)
            )
        rows.append(row)
    return rows


# --- the grid -------------------------------------------------------------------------------------------------

FULL = {
    # issue 20's cells (Criteo-like one-hot dnn at 64 / 1024 / 4096) and three registry models on the live world;
    # --workloads criteo-4hot, --vocab-sweep and --live-models all widen it (about 1.5 min per cell on 1 thread)
    "cpu": {
        "sweep_batch_sizes": "64,1024,4096",
        "batch_sizes": "4096",
        "vocab_cap": 1_000_000,
        "vocab_sweep": "",
        "vocab_sweep_batch": 4096,
        "workloads": "criteo-1hot,live",
        "criteo_models": "dnn",
        "live_models": "dnn,wide_deep,mmoe",
        "repeats": 5,
        "warmup": 3,
        "min_time": 1.5,
        "batches": 4,
        "live_rows": 100_000,
        "plain_max_gb": 6.0,
    },
    "cuda": {
        "sweep_batch_sizes": "16384,32768,65536",
        "batch_sizes": "32768",
        "vocab_cap": 10_000_000,
        "vocab_sweep": "100000,1000000",
        "vocab_sweep_batch": 32768,
        "workloads": "criteo-1hot,criteo-4hot,live",
        "criteo_models": "dnn,dcn",
        "live_models": "all",
        "repeats": 5,
        "warmup": 5,
        "min_time": 0.2,
        "batches": 8,
        "live_rows": 200_000,
        "plain_max_gb": 40.0,
    },
}
QUICK = {
    "sweep_batch_sizes": "128,256",
    "batch_sizes": "256",
    "vocab_cap": 2000,
    "vocab_sweep": "200",
    "vocab_sweep_batch": 256,
    "workloads": "criteo-1hot,criteo-2hot,live",
    "criteo_models": "dnn",
    "live_models": "wide_deep",
    "repeats": 2,
    "warmup": 2,
    "min_time": 0.01,
    "batches": 2,
    "live_rows": 3000,
    "plain_max_gb": 1.0,
}


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def _ints(text: str) -> List[int]:
    return [int(float(x)) for x in text.split(",") if x.strip()]


def _models(text: str) -> List[str]:
    names = model_names()
    if text == "all":
        return names
    chosen = [m for m in text.split(",") if m]
    unknown = [m for m in chosen if m not in names]
    if unknown:
        raise SystemExit(f"error: unknown model(s) {unknown}; registered: {names}")
    return chosen


def build_grid(opts: Dict[str, Any]) -> List[Cell]:
    """The cells of a run, in order:

    * ``batch``: every Criteo-like model on ``criteo-1hot`` over ``sweep_batch_sizes``;
    * ``hot``: every Criteo-like model on the other Criteo-like workloads (multi-hot) at ``batch_sizes``;
    * ``vocab``: the first Criteo-like model on ``criteo-1hot`` with other table caps at ``vocab_sweep_batch``;
    * ``models``: every live-streaming model (default: the whole registry) on ``live`` at ``batch_sizes``.
    """
    names = [w for w in opts["workloads"].split(",") if w]
    cells: List[Cell] = []
    criteo_models = _models(opts["criteo_models"])
    for w in names:
        if w == "live":
            continue
        if not (w.startswith("criteo-") and w.endswith("hot")):
            raise SystemExit(f"error: unknown workload '{w}' (criteo-1hot, criteo-<L>hot, live)")
        hot = int(w[len("criteo-") : -len("hot")])
        wl = CriteoWorkload(opts["vocab_cap"], dim=opts["dim"], hot=hot, zipf_a=opts["zipf_a"])
        sizes = _ints(opts["sweep_batch_sizes"]) if hot == 1 else _ints(opts["batch_sizes"])
        cells += [Cell("batch" if hot == 1 else "hot", wl, m, b) for m in criteo_models for b in sizes]
        if hot == 1 and criteo_models:
            for cap in _ints(opts["vocab_sweep"]):
                other = CriteoWorkload(cap, dim=opts["dim"], hot=1, zipf_a=opts["zipf_a"])
                cells.append(Cell("vocab", other, criteo_models[0], int(opts["vocab_sweep_batch"])))
    if "live" in names:
        live = LiveWorkload(rows=int(opts["live_rows"]), dim=opts["dim"], seed=0)
        cells += [Cell("models", live, m, b) for m in _models(opts["live_models"]) for b in _ints(opts["batch_sizes"])]
    return cells


# --- reporting ------------------------------------------------------------------------------------------------


def _k(x: Optional[float]) -> str:
    if x is None or x != x:
        return ""
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e3:
        return f"{x / 1e3:.1f}k"
    return f"{x:.0f}"


def _rate(r: Optional[Dict[str, Any]]) -> str:
    return "" if not r else f"{_k(r['median'])} ({_k(r['min'])}-{_k(r['max'])})"


def _ratio(r: Optional[Dict[str, Any]]) -> str:
    return "" if not r else f"{r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f})"


def _mib(m: Optional[Dict[str, Any]]) -> str:
    return "" if not m or m.get("peak_bytes") is None else f"{m['peak_bytes'] / 2**20:,.0f}"


def _label(c: Dict[str, Any]) -> str:
    return c["workload"] + (f" (cap {c['vocab_cap']:,})" if c["tag"] == "vocab" else "")


def _cells_of(result: Dict[str, Any], tag: str) -> List[Dict[str, Any]]:
    return [c for c in result["cells"] if c["tag"] == tag]


def _cpu_rate(r: Optional[Dict[str, Any]]) -> str:
    return "" if not r or "per_cpu_second" not in r else _k(r["per_cpu_second"]["median"])


def _median_x(r: Optional[Dict[str, Any]]) -> str:
    return "" if not r else f"{r['median']:.2f}x"


def _median_ms(r: Optional[Dict[str, Any]]) -> str:
    return "" if not r else f"{r['median']:.3f}"


def _ms(r: Optional[Dict[str, Any]]) -> str:
    return "" if not r else f"{r['median']:.3f} ({r['min']:.3f}-{r['max']:.3f})"


# path -> what the markdown calls it
PATH_WORDS = {
    "recsys": "registry model + TrainModule + fused row-wise Adagrad + DMP (FBGEMM TBE) + dense Adam, stepped as "
    "the trainer steps",
    "sparse": "plain PyTorch done well: per-table nn.EmbeddingBag(sparse=True) + sparse torch.optim.Adagrad, fused "
    "Adam for the dense part (the headline peer)",
    "dense": "what common CTR libraries do (DeepCTR-Torch, FuxiCTR): per-table nn.Embedding / nn.EmbeddingBag with "
    "dense gradients, fused Adam over every row of every table",
    "tbe_mlp": "one module: the same tables in bare FBGEMM TBE kernels (fused row-wise Adagrad) fed the KJT's ids "
    "directly, the same MLP, fused Adam; no torchrec module, no input/output dist, no DMP",
    "recsys_unchecked": "the recsys path with FBGEMM's bounds check off (sharding.bounds_check=none), to measure "
    "what the check costs",
    "tbe": "the bare FBGEMM kernels alone (precomputed inputs, fixed output gradient)",
    "mlp": "the same model with fixed pooled vectors instead of lookups (MLPs, loss, Adam)",
}


def _goal_lines(result: Dict[str, Any]) -> List[str]:
    rows = goal_status(result)
    if not any(r["measured"] is not None for r in rows):
        return []
    lines = [
        "### Goals (issue 20)",
        "",
        "Measured: median of the paired per-round values from wall time, and from CPU time (samples per "
        "CPU-second of the process; on a shared machine the steadier of the two).",
        "",
        "| goal | cell | target | measured (wall) | met (wall) | measured (CPU time) | met (CPU time) |",
        "|---|---|---|---|---|---|---|",
    ]

    def shown(value: Optional[float], at_most: bool) -> str:
        return "not run" if value is None else f"{value:.3f} ms" if at_most else f"{value:.2f}x"

    def verdict(met: Optional[bool]) -> str:
        return "" if met is None else "yes" if met else "**no**"

    for r in rows:
        unit = " ms" if r["at_most"] else "x"
        lines.append(
            f"| {r['goal']} | {r['model']}, batch {r['batch_size']} | "
            f"{'<=' if r['at_most'] else '>='} {r['target']:g}{unit} | {shown(r['measured'], r['at_most'])} "
            f"| {verdict(r['met'])} | {shown(r.get('measured_cpu'), r['at_most'])} | "
            f"{verdict(r.get('met_cpu'))} |"
        )
    return lines + [""]


def _phase_table(cells: List[Dict[str, Any]], phase: str, paths: Sequence[str]) -> List[str]:
    """Rows of wall samples/s (and samples per CPU-second) per path, recsys's ratios to the PyTorch and TBE + MLP
    paths and its overhead per step over TBE + MLP (ms)."""
    others = [p for p in ("sparse", "dense", "tbe_mlp") if p in paths]
    head = (
        ["workload", "model", "batch"]
        + [f"{p} samples/s · /CPU-s" for p in paths]
        + [f"recsys / {p} (wall · CPU time)" for p in others]
        + ["recsys overhead ms/step over tbe_mlp (wall · CPU time)", "bounds check ms/step (wall · CPU time)"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cells:
        if "error" in c:
            lines.append(
                f"| {_label(c)} | {c['model']} | {c['batch_size']} | error: {c['error']} |" + " |" * (len(head) - 4)
            )
            continue
        t, r = c.get(phase, {}), c.get("ratios", {})
        rates = [f"{_rate(t[p])} · {_cpu_rate(t[p])}" if t.get(p) else c.get("skipped", {}).get(p, "") for p in paths]
        lines.append(
            "| "
            + " | ".join(
                [_label(c), c["model"], str(c["batch_size"])]
                + rates
                + [
                    f"{_ratio(r.get(f'recsys_over_{p}_{phase}'))} · "
                    f"{_median_x(c.get('ratios_per_cpu_second', {}).get(f'recsys_over_{p}_{phase}'))}"
                    for p in others
                ]
                + [
                    f"{_ms(c.get(k + '_ms', {}).get(phase))} · {_median_ms(c.get(k + '_cpu_ms', {}).get(phase))}"
                    for k in ("overhead", "bounds_check")
                ]
            )
            + " |"
        )
    return lines + [""]


def markdown(result: Dict[str, Any]) -> str:
    env = result["environment"]
    settings = result["settings"]
    dev = settings["device"]
    paths = list(settings["paths"])
    load = result["load_average"]
    lines = [
        f"## Training and inference throughput ({dev.upper()}{', ' + env['gpu'] if env.get('gpu') else ''})",
        "",
        environment_markdown(env),
        f"Load average (1 / 5 / 15 min) at start: {' / '.join(f'{x:.2f}' for x in load['start'])}, at end: "
        f"{' / '.join(f'{x:.2f}' for x in load['end'])}; wall time {result['seconds'] / 60:.1f} min. Samples/s: "
        f"median (min-max) over {settings['repeats']} interleaved rounds of >= {settings['min_time']:g} s per "
        "path; /CPU-s: samples per CPU-second of the process (median); ratios: median (min-max) of per-round "
        "ratios; overhead: batch x (1/recsys - 1/tbe_mlp) per round, median (min-max).",
        "",
    ]
    lines += _goal_lines(result)
    lines += ["Paths (docs/benchmarks.md):", ""]
    stepped = f" ({'TrainPipelineSparseDist' if settings['pipeline'] else 'plain loop'})"
    lines += [f"* **{p}**: {PATH_WORDS[p]}" + (stepped if p == "recsys" else "") + "." for p in paths]
    lines += ["", f"Memory: peak MiB each path adds ({result['memory_method']}).", ""]
    titles = {
        "batch": "Criteo-like one-hot, over batch sizes",
        "hot": "Criteo-like multi-hot",
        "vocab": "Criteo-like one-hot, over table sizes",
        "models": "registered models, live-streaming world",
    }
    for tag, title in titles.items():
        cells = _cells_of(result, tag)
        if not cells:
            continue
        lines += [
            f"### Training: {title}",
            "",
            f"Workload: {cells[0]['description']}."
            if tag != "vocab"
            else "Workloads: " + "; ".join(sorted({c["description"] for c in cells})) + ".",
            "",
        ]
        lines += _phase_table(cells, "train", paths)
        mem = [c for c in cells if "memory" in c]
        if mem:
            lines += [
                "| workload | model | batch | " + " | ".join(f"MiB {p}" for p in paths) + " |",
                "|---|---|---|" + "---|" * len(paths),
            ]
            lines += [
                f"| {_label(c)} | {c['model']} | {c['batch_size']} | "
                + " | ".join(_mib(c["memory"].get(p)) for p in paths)
                + " |"
                for c in mem
            ]
            lines.append("")
    infer = [c for c in result["cells"] if "infer" in c]
    if infer:
        lines += ["### Inference (forward only, no gradient)", ""] + _phase_table(infer, "infer", paths)
    bw = [c for c in result["cells"] if "tbe_bandwidth" in c and c["tag"] in ("batch", "hot", "vocab")]
    if bw:
        gpu = any("fraction_of_hbm_peak" in c["tbe_bandwidth"] for c in bw)
        lines += [
            "### Embedding lookup bandwidth (bare TBE, forward + backward with the fused update)",
            "",
            "Bytes per step count every looked-up row (FBGEMM's benchmark convention): forward reads the rows, "
            "indices and offsets and writes the pooled output; backward reads the output gradient and the "
            "indices and reads + writes every looked-up row and its momentum. Hot Zipf rows served from cache "
            "count too, so this is an effective bandwidth.",
            "",
            "| workload | tables of | batch | MB / step | GB/s |" + (" fraction of HBM peak |" if gpu else ""),
            "|---|---|---|---|---|" + ("---|" if gpu else ""),
        ]
        for c in bw:
            b = c["tbe_bandwidth"]
            lines.append(
                f"| {c['workload']} (cap {c['vocab_cap']:,}) | {c['model']} | {c['batch_size']} | "
                f"{b['bytes_per_step'] / 1e6:,.1f} | {b['bytes_per_s'] / 1e9:,.1f} |"
                + (f" {b.get('fraction_of_hbm_peak', float('nan')):.1%} |" if gpu else "")
            )
        lines.append("")
    return "\n".join(lines) + "\n"


def plots(result: Dict[str, Any], prefix: str) -> List[str]:
    """``<prefix>_{batch,ratio,models}.png`` (drawn by ``benchmarks/plots.py``): samples/s of every path over batch
    sizes; recsys / sparse PyTorch and recsys / TBE + MLP per cell with the goals; the paths per live-world model."""
    from benchmarks.plots import save, throughput_figures

    written = []
    for name, fig in throughput_figures(result).items():
        save(fig, f"{prefix}_{name}.png")
        written.append(f"{prefix}_{name}.png")
    return written


# --- command line ---------------------------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.throughput",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--quick", action="store_true", help="tiny sizes and few rounds: checks the harness works")
    p.add_argument("--workloads", help="criteo-1hot, criteo-<L>hot (multi-hot, mean L ids), live")
    p.add_argument("--criteo-models", help="models on the Criteo-like workloads ('all': the registry)")
    p.add_argument("--live-models", help="models on the live-streaming world ('all': the registry)")
    p.add_argument("--sweep-batch-sizes", help="batch sizes of the Criteo-like one-hot sweep")
    p.add_argument("--batch-sizes", help="batch sizes of the other workloads")
    p.add_argument("--vocab-cap", type=int, help="most rows of a Criteo-like table (1e4 .. 1e8)")
    p.add_argument("--vocab-sweep", help="further table caps timed for the first Criteo-like model")
    p.add_argument("--vocab-sweep-batch", type=int, help="batch size of the table-cap sweep")
    p.add_argument("--dim", type=int, default=16, help="embedding width")
    p.add_argument("--zipf-a", type=float, default=1.05, help="Zipf exponent of the Criteo-like ids")
    p.add_argument("--live-rows", type=int, help="impressions generated for the live-streaming world")
    p.add_argument(
        "--paths",
        help=f"which of {','.join(PATHS)} to time (default: {','.join(DEFAULT_PATHS['cpu'])}; on cuda also tbe)",
    )
    p.add_argument(
        "--pipeline",
        choices=("auto", "plain", "sparse_dist"),
        default="auto",
        help="how the recsys path steps (auto: TrainPipelineSparseDist on GPU, like the trainer)",
    )
    p.add_argument("--repeats", type=int, help="interleaved timing rounds")
    p.add_argument("--warmup", type=int, help="untimed steps per path")
    p.add_argument("--min-time", type=float, help="seconds per path and round")
    p.add_argument("--batches", type=int, help="distinct batches per cell")
    p.add_argument("--plain-max-gb", type=float, help="skip the dense path when it would need more memory (GB)")
    p.add_argument("--no-inference", action="store_true", help="time training only")
    p.add_argument(
        "--threads",
        type=int,
        help="torch intra-op threads (default: torch's choice); 1 gives stable "
        "numbers on a machine shared with other jobs, where OpenMP threads wait on each other",
    )
    p.add_argument("--out", default=RESULTS)
    p.add_argument(
        "--render",
        metavar="JSON",
        help="only re-derive the ratios and goals of an earlier result from "
        "its timings and rewrite it, its markdown and plots",
    )
    args = p.parse_args(argv)
    if args.render:
        with open(args.render) as f:
            earlier = json.load(f)
        rederive(earlier)
        write_json(args.render, earlier)
        write_report(earlier, os.path.splitext(args.render)[0])
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)

    setup_logging()
    # the planner warns on every cell that its Topology is built directly and its dense-size estimate is a dry
    # run's: recsys.train.sharding's business, and noise between the progress bars here
    logging.getLogger("torchrec").setLevel(logging.ERROR)
    opts = dict(QUICK if args.quick else FULL[args.device])
    for key in list(opts) + ["dim", "zipf_a"]:
        value = getattr(args, key, None)
        if value is not None:
            opts[key] = value
    paths = [x for x in (args.paths or ",".join(DEFAULT_PATHS[args.device])).split(",") if x]
    bad = [x for x in paths if x not in PATHS]
    if bad:
        print(f"error: unknown path(s) {bad}; paths: {list(PATHS)}", file=sys.stderr)
        return 2
    info = init_distributed(args.device)
    settings = Settings(
        device=info.device,
        pipeline=args.pipeline == "sparse_dist" or (args.pipeline == "auto" and info.device.type == "cuda"),
        paths=paths,
        repeats=int(opts["repeats"]),
        warmup=int(opts["warmup"]),
        min_time=float(opts["min_time"]),
        batches=int(opts["batches"]),
        plain_max_gb=float(opts["plain_max_gb"]),
        inference=not args.no_inference,
    )
    load_start = list(os.getloadavg())
    start = time.perf_counter()
    cells = build_grid(opts)
    out_cells = []
    method = ""
    for cell in tqdm(cells, desc="throughput", unit="cell", disable=not is_terminal()):  # bars only on a terminal
        row: Dict[str, Any] = {
            "tag": cell.tag,
            "workload": cell.workload.name,
            "model": cell.model,
            "batch_size": cell.batch_size,
            "description": cell.workload.description,
            "vocab_cap": getattr(cell.workload, "vocab_cap", None),
        }
        t0 = time.perf_counter()
        try:
            row.update(run_cell(cell, settings))
            method = next((m["method"] for m in row["memory"].values()), method)
        except Exception as e:  # one model failing must not lose the others' results; it is reported
            log.warning("%s on %s at %d: %s: %s", cell.model, cell.workload.name, cell.batch_size, type(e).__name__, e)
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        row["seconds"] = time.perf_counter() - t0
        out_cells.append(row)
        release()
    result = {
        "environment": environment(),
        "settings": {
            "device": settings.device.type,
            "pipeline": settings.pipeline,
            "paths": list(paths),
            "repeats": settings.repeats,
            "warmup": settings.warmup,
            "min_time": settings.min_time,
            "batches": settings.batches,
            "grid": opts,
            "goals": [dataclasses.asdict(g) for g in GOALS],
        },
        "memory_method": method,
        "load_average": {"start": load_start, "end": list(os.getloadavg())},
        "seconds": time.perf_counter() - start,
        "cells": out_cells,
    }
    result["goals"] = goal_status(result)
    # GPU results carry the device in their name (an H100 run and an H200 run do not overwrite each other)
    gpu = result["environment"].get("gpu")
    name = (
        f"throughput_{settings.device.type}"
        + (f"_{_slug(gpu)}" if gpu and settings.device.type == "cuda" else "")
        + ("_quick" if args.quick else "")
    )
    write_json(os.path.join(args.out, name + ".json"), result)
    write_report(result, os.path.join(args.out, name))
    return 0


def rederive(result: Dict[str, Any]) -> None:
    """Recompute every cell's derived values and the goals from the timings a result holds (a result written by an
    earlier version of :func:`derived` gets what this one reports)."""
    gpu = result["environment"].get("gpu") if result["settings"]["device"] == "cuda" else None
    for c in result["cells"]:
        if "train" in c:
            c.update(derived(c, c["batch_size"], gpu))
    result["settings"]["goals"] = [dataclasses.asdict(g) for g in GOALS]
    result["goals"] = goal_status(result)


def write_report(result: Dict[str, Any], prefix: str) -> None:
    """``<prefix>.md`` and ``<prefix>_*.png`` from a result; the markdown also goes to stdout."""
    md = markdown(result)
    pngs = plots(result, prefix)
    md += "\n".join(f"![{os.path.basename(x)}]({os.path.basename(x)})" for x in pngs) + "\n"
    write_text(prefix + ".md", md)
    print(md)


if __name__ == "__main__":
    sys.exit(main())
