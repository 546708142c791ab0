"""Training and inference throughput: recsys's fused TorchRec path beside plain PyTorch, the bare FBGEMM kernel
and the MLP alone, for the same model on the same batches, measured side by side in one process.

    python -m benchmarks.throughput --device cpu            # the default grid (< 15 min on 2 idle cores)
    python -m benchmarks.throughput --device cuda           # on a GPU: TrainPipelineSparseDist, batches 16k-64k
    python -m benchmarks.throughput --quick --out /tmp/tp   # tiny sizes: checks the harness works

Paths timed for every (workload, model, batch size) cell:
    recsys  the registry model in TrainModule, embedding optimizer fused (row-wise Adagrad applied in backward),
            DistributedModelParallel with the planner's plan (FBGEMM TBE), dense Adam through build_optimizer;
            stepped exactly as the trainer steps: plain loop on CPU, TrainPipelineSparseDist on GPU.
    plain   the same model with one nn.Embedding / nn.EmbeddingBag per table (dense gradients, the recsys path's
            initial weights), torch.optim.Adam over every parameter, same loss, same batches (benchmarks/plain.py).
    tbe     the bare kernel bound: the same tables in SplitTableBatchedEmbeddingBagsCodegen with fused row-wise
            Adagrad, precomputed indices/offsets and a fixed output gradient (benchmarks/kernels.py).
    mlp     the same model with fixed pooled vectors instead of lookups: MLPs, loss and Adam only.

Bound: ``bound = 1 / (1/tbe + 1/mlp)`` samples/s (the embedding kernel plus the dense cost, with no overhead);
the recsys path meets it within 15% when ``1/recsys <= 1.15 * (1/tbe + 1/mlp)``.

Each path is timed in ``--repeats`` interleaved rounds (the path order rotates every round, so a slow spell of
a shared machine hits every path alike); a round runs whole steps for at least ``--min-time`` seconds after
``--warmup`` steps. Reported: median samples/s with min/max and quartiles over rounds, ratios as the median of
per-round ratios (paired, so contention cancels) with their min/max, and the peak memory each path adds
(benchmarks/memory.py). Results: ``<out>/throughput_<device>.{json,md}`` and PNG plots beside them.
"""

import argparse
import copy
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
from benchmarks.kernels import TbeBound, hbm_peak
from benchmarks.memory import PeakMemory, release
from benchmarks.plain import mlp_twin, plain_twin
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

PATHS = ("recsys", "plain", "tbe", "mlp")
BOUND_SLACK = 1.15
TARGET_RATIO = 2.5


@dataclass
class Settings:
    """How every cell is measured (one object for the whole run).

    Args:
        device: ``cpu`` or ``cuda``.
        pipeline: step the recsys path with TrainPipelineSparseDist (the trainer does on GPU).
        paths: which of :data:`PATHS` to time.
        repeats: interleaved timing rounds per path.
        warmup: untimed steps before timing (the first creates optimizer state).
        min_time: seconds each path runs per round (whole steps, at least one).
        batches: distinct batches per cell, cycled.
        plain_max_gb: skip the plain path when its tables, gradients and Adam moments would exceed this.
        inference: also time forward-only steps.
        seed: model initialisation and data.
    """

    device: torch.device
    pipeline: bool
    paths: Sequence[str] = PATHS
    repeats: int = 5
    warmup: int = 3
    min_time: float = 0.3
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

    def __init__(self, model: torch.nn.Module, batches: List[Any], settings: Settings, batch_size: int,
                 embedding_optimizer: Optional[EmbeddingOptimizerConfig] = None,
                 sharding: Optional[ShardingConfig] = None) -> None:
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
    """A plain-PyTorch training loop over a twin of the model (``plain`` or ``mlp``): batches already on the
    device, ``torch.optim.Adam`` over every parameter, the same loss module.

    Args:
        name: ``plain`` or ``mlp``.
        twin: the model twin (see :mod:`benchmarks.plain`).
        batches: batches already on ``device``, cycled.
        device: where to run.
    """

    def __init__(self, name: str, twin: torch.nn.Module, batches: List[Any], device: torch.device) -> None:
        self.name = name
        self.device = device
        self.module = TrainModule(twin, MultiTaskLoss(twin.schema, None, twin.dependent_loss)).to(device)
        # the fastest stock Adam (fused kernels on CPU since torch 2.4 and on CUDA): a strong baseline
        self.optimizer = torch.optim.Adam(self.module.parameters(), lr=OptimizerConfig().lr, fused=True)
        self._it = itertools.cycle(batches)

    def train_step(self) -> None:
        batch = next(self._it)
        self.optimizer.zero_grad()
        loss, _ = self.module(batch)
        loss.backward()
        self.optimizer.step()

    def eval_mode(self) -> None:
        self.module.eval()

    @torch.no_grad()
    def infer_step(self) -> None:
        self.module(next(self._it))


class TbePath:
    """The bare kernel bound (see :class:`benchmarks.kernels.TbeBound`) on the model's tables.

    Args:
        arch: the model's SparseArch.
        batches: batches whose KJTs become kernel inputs (outside the timed region).
        settings: device.
        lr, eps, bounds_check: those of the recsys path.
    """

    name = "tbe"

    def __init__(self, arch: Any, batches: List[Any], settings: Settings, lr: float, eps: float,
                 bounds_check: Any) -> None:
        self.bound = TbeBound(arch, lr, eps, bounds_check, settings.device)
        self.inputs = [self.bound.prepare(b.sparse) for b in batches]
        self._it = itertools.cycle(self.inputs)

    @property
    def bytes_per_step(self) -> Dict[str, float]:
        return {"forward": float(np.mean([i.forward_bytes for i in self.inputs])),
                "backward": float(np.mean([i.backward_bytes for i in self.inputs]))}

    def train_step(self) -> None:
        self.bound.train_step(next(self._it))

    def eval_mode(self) -> None:
        pass

    def infer_step(self) -> None:
        self.bound.infer_step(next(self._it))


def plain_bytes(schema: Any) -> int:
    """Bytes the plain path holds for its main tables: fp32 weights, dense gradients and two Adam moments
    (wide tables, 4 columns each, are left out of this estimate)."""
    elements = {f.table_name: f.num_embeddings * f.embedding_dim for f in schema.sparse}
    return 4 * 4 * sum(elements.values())


def _stats(rates: List[float]) -> Dict[str, float]:
    a = np.asarray(rates, dtype=float)
    return {"median": float(np.median(a)), "min": float(a.min()), "max": float(a.max()),
            "q1": float(np.percentile(a, 25)), "q3": float(np.percentile(a, 75)), "rounds": [float(x) for x in a]}


def _time_rounds(paths: Dict[str, Any], step: str, batch_size: int, settings: Settings,
                 steps: Dict[str, int]) -> Dict[str, Dict[str, float]]:
    """samples/s per path over interleaved rounds (the order rotates every round)."""
    names = list(paths)
    rates: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(settings.repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            fn: Callable[[], None] = getattr(paths[name], step)
            _sync(settings.device)
            t = time.perf_counter()
            for _ in range(steps[name]):
                fn()
            _sync(settings.device)
            rates[name].append(steps[name] * batch_size / (time.perf_counter() - t))
    return {n: _stats(v) for n, v in rates.items()}


def _steps_per_round(fn: Callable[[], None], settings: Settings) -> int:
    """Steps filling ``min_time`` seconds, from the faster of two timed steps (after warm-up)."""
    times = []
    for _ in range(2):
        _sync(settings.device)
        t = time.perf_counter()
        fn()
        _sync(settings.device)
        times.append(time.perf_counter() - t)
    return int(min(1000, max(1, math.ceil(settings.min_time / max(min(times), 1e-6)))))


def _paired_ratio(a: Dict[str, Any], b: Dict[str, Any]) -> Dict[str, float]:
    r = np.asarray(a["rounds"]) / np.asarray(b["rounds"])
    return {"median": float(np.median(r)), "min": float(r.min()), "max": float(r.max())}


def _bound_rounds(tbe: Dict[str, Any], mlp: Dict[str, Any]) -> Dict[str, Any]:
    rounds = [1.0 / (1.0 / t + 1.0 / m) for t, m in zip(tbe["rounds"], mlp["rounds"])]
    return _stats(rounds)


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
    embedding_optimizer, sharding = EmbeddingOptimizerConfig(), ShardingConfig()  # the trainer's defaults
    for name in settings.paths:
        if name == "plain" and plain_bytes(wl.schema) > settings.plain_max_gb * 1024**3:
            skipped[name] = (f"needs ~{plain_bytes(wl.schema) / 1024**3:.1f} GB (tables, dense gradients, Adam "
                             f"moments) > --plain-max-gb {settings.plain_max_gb}")
            continue
        with PeakMemory(settings.device) as mem:
            if name == "recsys":
                path: Any = RecsysPath(model, batches, settings, b, embedding_optimizer, sharding)
                weights = table_weights(path.dmp)
            elif name == "plain":
                path = EagerPath("plain", plain_twin(base, weights, settings.device), on_device, settings.device)
            elif name == "mlp":
                path = EagerPath("mlp", mlp_twin(base, b, settings.device), on_device, settings.device)
            else:
                arch = next(m for m in base.modules() if isinstance(m, SparseArch))
                path = TbePath(arch, batches, settings, embedding_optimizer.lr, embedding_optimizer.eps,
                               BOUNDS_CHECK[sharding.bounds_check])
            for _ in range(settings.warmup):
                path.train_step()
            _sync(settings.device)
        paths[name] = path
        memory[name] = mem.result()
        steps[name] = _steps_per_round(path.train_step, settings)
    weights = None
    out: Dict[str, Any] = {"train": _time_rounds(paths, "train_step", b, settings, steps), "memory": memory,
                           "steps_per_round": {"train": steps}, "skipped": skipped}
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
    """Ratios, the TBE + MLP bound and the lookup's achieved bandwidth from a cell's timings.

    Args:
        out: the cell's ``train`` (and ``infer``) timings, and ``tbe_bytes_per_step`` when the bound ran.
        batch_size: samples per step.
        gpu_name: the CUDA device's name (for its HBM peak), None on CPU.
    """
    train = out["train"]
    d: Dict[str, Any] = {"ratios": {}}
    if "recsys" in train and "plain" in train:
        d["ratios"]["recsys_over_plain_train"] = _paired_ratio(train["recsys"], train["plain"])
        if "infer" in out:
            d["ratios"]["recsys_over_plain_infer"] = _paired_ratio(out["infer"]["recsys"], out["infer"]["plain"])
    if "tbe" in train and "mlp" in train:
        d["bound_train"] = _bound_rounds(train["tbe"], train["mlp"])
        if "recsys" in train:
            frac = _paired_ratio(train["recsys"], d["bound_train"])
            d["ratios"]["recsys_over_bound_train"] = frac
            # 1/recsys <= 1.15 (1/tbe + 1/mlp)  <=>  recsys / bound >= 1 / 1.15
            d["within_bound"] = bool(frac["median"] >= 1.0 / BOUND_SLACK)
    if "tbe_bytes_per_step" in out and "tbe" in train:
        per_step = out["tbe_bytes_per_step"]["forward"] + out["tbe_bytes_per_step"]["backward"]
        achieved = per_step * train["tbe"]["median"] / batch_size
        bw: Dict[str, Any] = {"bytes_per_step": per_step, "bytes_per_s": achieved}
        if gpu_name:
            peak = hbm_peak(gpu_name)
            bw.update({"hbm_peak_bytes_per_s": peak, "fraction_of_hbm_peak": achieved / peak})
        d["tbe_bandwidth"] = bw
    return d


# --- the grid -------------------------------------------------------------------------------------------------

FULL = {
    "cpu": {"sweep_batch_sizes": "1024,4096,16384", "batch_sizes": "4096", "vocab_cap": 1_000_000,
            "vocab_sweep": "10000,100000", "vocab_sweep_batch": 4096, "workloads": "criteo-1hot,criteo-4hot,live",
            "criteo_models": "dnn,wide_deep", "live_models": "all", "repeats": 5, "warmup": 3, "min_time": 0.3,
            "batches": 4, "live_rows": 100_000, "plain_max_gb": 6.0},
    "cuda": {"sweep_batch_sizes": "16384,32768,65536", "batch_sizes": "32768", "vocab_cap": 10_000_000,
             "vocab_sweep": "100000,1000000", "vocab_sweep_batch": 32768,
             "workloads": "criteo-1hot,criteo-4hot,live", "criteo_models": "dnn,wide_deep", "live_models": "all",
             "repeats": 5, "warmup": 5, "min_time": 0.2, "batches": 8, "live_rows": 200_000,
             "plain_max_gb": 40.0},
}
QUICK = {"sweep_batch_sizes": "128,256", "batch_sizes": "256", "vocab_cap": 2000, "vocab_sweep": "200",
         "vocab_sweep_batch": 256, "workloads": "criteo-1hot,criteo-2hot,live", "criteo_models": "dnn",
         "live_models": "wide_deep", "repeats": 2, "warmup": 2, "min_time": 0.01, "batches": 2, "live_rows": 3000,
         "plain_max_gb": 1.0}


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
        hot = int(w[len("criteo-"):-len("hot")])
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


def headline(result: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The acceptance cell: the first Criteo-like one-hot model at batch 4096 (or the sweep's middle size)."""
    sweep = [c for c in _cells_of(result, "batch") if "train" in c]
    if not sweep:
        return None
    first = sweep[0]["model"]
    same = [c for c in sweep if c["model"] == first]
    exact = [c for c in same if c["batch_size"] == 4096]
    return exact[0] if exact else same[len(same) // 2]


def markdown(result: Dict[str, Any]) -> str:
    env = result["environment"]
    dev = result["settings"]["device"]
    lines = [f"## Training and inference throughput ({dev.upper()}{', ' + env['gpu'] if env.get('gpu') else ''})",
             "", environment_markdown(env),
             f"Load average (1 min) at start / end: {result['load_average'][0]:.1f} / {result['load_average'][1]:.1f}"
             f"; wall time {result['seconds'] / 60:.1f} min. Samples/s: median (min-max) over "
             f"{result['settings']['repeats']} interleaved rounds; ratios: median (min-max) of per-round ratios.",
             ""]
    h = headline(result)
    if h is not None and h.get("ratios"):
        rp = h["ratios"].get("recsys_over_plain_train")
        rb = h["ratios"].get("recsys_over_bound_train")
        lines.append(f"**Headline** ({h['workload']}, {h['model']}, batch {h['batch_size']}): recsys trains at "
                     f"{_k(h['train']['recsys']['median'])} samples/s"
                     + (f", {rp['median']:.2f}x plain PyTorch (target >= {TARGET_RATIO}x: "
                        f"{'met' if rp['median'] >= TARGET_RATIO else 'NOT met'})" if rp else "")
                     + (f", {rb['median'] * 100:.0f}% of the TBE + MLP bound (target >= "
                        f"{100 / BOUND_SLACK:.0f}%, i.e. 1/recsys <= {BOUND_SLACK} x (1/tbe + 1/mlp): "
                        f"{'met' if h.get('within_bound') else 'NOT met'})" if rb else "") + ".")
        lines.append("")
    lines += [
        "Paths: **recsys** = registry model + TrainModule + fused row-wise Adagrad + DMP (FBGEMM TBE) + dense Adam, "
        f"stepped as the trainer steps ({'TrainPipelineSparseDist' if result['settings']['pipeline'] else 'plain loop'}); "
        "**plain** = same model with per-table nn.Embedding/EmbeddingBag, dense gradients, torch.optim.Adam "
        "(fused) over everything; **tbe** = bare FBGEMM SplitTableBatchedEmbeddingBagsCodegen on the same tables "
        "with fused row-wise Adagrad (forward + backward); **mlp** = same model with fixed pooled vectors instead of "
        "lookups; **bound** = 1 / (1/tbe + 1/mlp). Memory: peak MiB each path adds "
        f"({result['memory_method']}).",
        "",
    ]
    titles = {"batch": "Criteo-like one-hot, over batch sizes", "hot": "Criteo-like multi-hot",
              "vocab": "Criteo-like one-hot, over table sizes", "models": "Every registered model, live-streaming world"}
    for tag, title in titles.items():
        cells = _cells_of(result, tag)
        if not cells:
            continue
        lines += [f"### Training: {title}", "", f"Workload: {cells[0]['description']}." if tag != "vocab" else
                  "Workloads: " + "; ".join(sorted({c['description'] for c in cells})) + ".", "",
                  "| workload | model | batch | recsys | plain | tbe | mlp | bound | recsys / plain | recsys / bound "
                  "| MiB recsys | MiB plain |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for c in cells:
            if "error" in c:
                lines.append(f"| {_label(c)} | {c['model']} | {c['batch_size']} | error: {c['error']} |"
                             + " |" * 8)
                continue
            t, r = c["train"], c.get("ratios", {})
            lines.append(
                f"| {_label(c)} | {c['model']} | {c['batch_size']} | {_rate(t.get('recsys'))} | "
                f"{_rate(t.get('plain')) or c['skipped'].get('plain', '')} | {_rate(t.get('tbe'))} | "
                f"{_rate(t.get('mlp'))} | {_rate(c.get('bound_train'))} | "
                f"{_ratio(r.get('recsys_over_plain_train'))} | {_ratio(r.get('recsys_over_bound_train'))} | "
                f"{_mib(c['memory'].get('recsys'))} | {_mib(c['memory'].get('plain'))} |")
        lines.append("")
    infer = [c for c in result["cells"] if "infer" in c]
    if infer:
        lines += ["### Inference (forward only)", "",
                  "| workload | model | batch | recsys | plain | tbe | mlp | recsys / plain |",
                  "|---|---|---|---|---|---|---|---|"]
        for c in infer:
            i = c["infer"]
            lines.append(f"| {_label(c)} | {c['model']} | {c['batch_size']} | {_rate(i.get('recsys'))} | "
                         f"{_rate(i.get('plain'))} | {_rate(i.get('tbe'))} | {_rate(i.get('mlp'))} | "
                         f"{_ratio(c.get('ratios', {}).get('recsys_over_plain_infer'))} |")
        lines.append("")
    bw = [c for c in result["cells"] if "tbe_bandwidth" in c and c["tag"] in ("batch", "hot", "vocab")]
    if bw:
        gpu = any("fraction_of_hbm_peak" in c["tbe_bandwidth"] for c in bw)
        lines += ["### Embedding lookup bandwidth (bare TBE, forward + backward with the fused update)", "",
                  "Bytes per step count every looked-up row (FBGEMM's benchmark convention): forward reads the rows, "
                  "indices and offsets and writes the pooled output; backward reads the output gradient and the "
                  "indices and reads + writes every looked-up row and its momentum. Hot Zipf rows served from cache "
                  "count too, so this is an effective bandwidth.", "",
                  "| workload | tables of | batch | MB / step | GB/s |" + (" fraction of HBM peak |" if gpu else ""),
                  "|---|---|---|---|---|" + ("---|" if gpu else "")]
        for c in bw:
            b = c["tbe_bandwidth"]
            lines.append(f"| {c['workload']} (cap {c['vocab_cap']:,}) | {c['model']} | {c['batch_size']} | "
                         f"{b['bytes_per_step'] / 1e6:,.1f} | {b['bytes_per_s'] / 1e9:,.1f} |"
                         + (f" {b.get('fraction_of_hbm_peak', float('nan')):.1%} |" if gpu else ""))
        lines.append("")
    return "\n".join(lines) + "\n"


def plots(result: Dict[str, Any], prefix: str) -> List[str]:
    """``<prefix>_{batch,ratio,models}.png`` (drawn by ``benchmarks/plots.py``): samples/s of every path over batch
    sizes; recsys / plain PyTorch and recsys / bound per cell with the targets; recsys and plain per model."""
    from benchmarks.plots import save, throughput_figures

    written = []
    for name, fig in throughput_figures(result).items():
        save(fig, f"{prefix}_{name}.png")
        written.append(f"{prefix}_{name}.png")
    return written


# --- command line ---------------------------------------------------------------------------------------------

def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.add_argument("--paths", default=",".join(PATHS), help="which of recsys,plain,tbe,mlp to time")
    p.add_argument("--pipeline", choices=("auto", "plain", "sparse_dist"), default="auto",
                   help="how the recsys path steps (auto: TrainPipelineSparseDist on GPU, like the trainer)")
    p.add_argument("--repeats", type=int, help="interleaved timing rounds")
    p.add_argument("--warmup", type=int, help="untimed steps per path")
    p.add_argument("--min-time", type=float, help="seconds per path and round")
    p.add_argument("--batches", type=int, help="distinct batches per cell")
    p.add_argument("--plain-max-gb", type=float, help="skip the plain path when it would need more memory (GB)")
    p.add_argument("--no-inference", action="store_true", help="time training only")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice); 1 gives stable "
                   "numbers on a machine shared with other jobs, where OpenMP threads wait on each other")
    p.add_argument("--out", default=RESULTS)
    p.add_argument("--render", metavar="JSON", help="only rewrite the markdown and plots of an earlier result")
    args = p.parse_args(argv)
    if args.render:
        with open(args.render) as f:
            earlier = json.load(f)
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
    paths = [x for x in args.paths.split(",") if x]
    bad = [x for x in paths if x not in PATHS]
    if bad:
        print(f"error: unknown path(s) {bad}; paths: {list(PATHS)}", file=sys.stderr)
        return 2
    info = init_distributed(args.device)
    settings = Settings(
        device=info.device,
        pipeline=args.pipeline == "sparse_dist" or (args.pipeline == "auto" and info.device.type == "cuda"),
        paths=paths, repeats=int(opts["repeats"]), warmup=int(opts["warmup"]), min_time=float(opts["min_time"]),
        batches=int(opts["batches"]), plain_max_gb=float(opts["plain_max_gb"]), inference=not args.no_inference,
    )
    load_start = os.getloadavg()[0]
    start = time.perf_counter()
    cells = build_grid(opts)
    out_cells = []
    method = ""
    for cell in tqdm(cells, desc="throughput", unit="cell", disable=not is_terminal()):  # bars only on a terminal
        row: Dict[str, Any] = {"tag": cell.tag, "workload": cell.workload.name, "model": cell.model,
                               "batch_size": cell.batch_size, "description": cell.workload.description,
                               "vocab_cap": getattr(cell.workload, "vocab_cap", None)}
        t0 = time.perf_counter()
        try:
            row.update(run_cell(cell, settings))
            method = next((m["method"] for m in row["memory"].values()), method)
        except Exception as e:  # one model failing must not lose the others' results; it is reported
            log.warning("%s on %s at %d: %s: %s", cell.model, cell.workload.name, cell.batch_size,
                        type(e).__name__, e)
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        row["seconds"] = time.perf_counter() - t0
        out_cells.append(row)
        release()
    result = {
        "environment": environment(),
        "settings": {"device": settings.device.type, "pipeline": settings.pipeline, "paths": list(paths),
                     "repeats": settings.repeats, "warmup": settings.warmup, "min_time": settings.min_time,
                     "batches": settings.batches, "grid": opts, "bound_slack": BOUND_SLACK,
                     "bound_formula": "bound = 1 / (1/tbe + 1/mlp); within bound iff 1/recsys <= "
                                      f"{BOUND_SLACK} * (1/tbe + 1/mlp)",
                     "target_ratio_recsys_over_plain": TARGET_RATIO},
        "memory_method": method,
        "load_average": [load_start, os.getloadavg()[0]],
        "seconds": time.perf_counter() - start,
        "cells": out_cells,
    }
    # GPU results carry the device in their name (an H100 run and an H200 run do not overwrite each other)
    gpu = result["environment"].get("gpu")
    name = f"throughput_{settings.device.type}" + (f"_{_slug(gpu)}" if gpu and settings.device.type == "cuda" else "") \
        + ("_quick" if args.quick else "")
    write_json(os.path.join(args.out, name + ".json"), result)
    write_report(result, os.path.join(args.out, name))
    return 0


def write_report(result: Dict[str, Any], prefix: str) -> None:
    """``<prefix>.md`` and ``<prefix>_*.png`` from a result; the markdown also goes to stdout."""
    md = markdown(result)
    pngs = plots(result, prefix)
    md += "\n".join(f"![{os.path.basename(x)}]({os.path.basename(x)})" for x in pngs) + "\n"
    write_text(prefix + ".md", md)
    print(md)


if __name__ == "__main__":
    sys.exit(main())
