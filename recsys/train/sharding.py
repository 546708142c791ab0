"""DistributedModelParallel with the planner: constraints from the config, a topology from the real job.

Every embedding table of the model is sharded by torchrec's planner within the sharding types and compute
kernels the config allows; FBGEMM's bounds check is on (``fatal`` by default), so an out-of-range id raises
instead of reading another row's memory.

The planner's :class:`~torchrec.distributed.planner.Topology` is built from the job: world size, local world
size (ranks per host), compute device, per-rank HBM and DDR capacities and the per-rank batch size. Capacities
come from ``sharding.hbm_gb`` / ``ddr_gb`` / ``host_ddr_gb`` when set, else from the device the job runs on
(``device_type: auto``), else from a preset (:data:`DEVICES`: H100 80 GiB, H200 141 GiB of HBM per GPU, 2 TiB of
host memory per 8-GPU host). :func:`plan_report` turns the planner's choice into a table of shards and per-rank
memory; ``recsys plan`` prints it for any world size without allocating a table (meta device).

Embedding tables are initialised from ``(seed, table name, row block)`` after sharding
(:func:`init_embeddings`), so a seed gives the same model whatever the world size and plan: a 2-rank run starts
from exactly the weights of a 1-rank run.
"""

import logging
import os
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from fbgemm_gpu.split_table_batched_embeddings_ops_common import BoundsCheckMode
from torch import nn
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.model_parallel import DataParallelWrapper, DefaultDataParallelWrapper
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.planner.storage_reservations import HeuristicalStorageReservation
from torchrec.distributed.planner.types import PlannerError, ShardingOption, Stats
from torchrec.distributed.types import ShardingEnv, ShardingPlan
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from recsys.config import ShardingConfig
from recsys.console import quiet_library
from recsys.errors import ConfigError

log = logging.getLogger(__name__)

BOUNDS_CHECK = {
    "fatal": BoundsCheckMode.FATAL,
    "warning": BoundsCheckMode.WARNING,
    "ignore": BoundsCheckMode.IGNORE,
    "none": BoundsCheckMode.NONE,
}
GIB = 1024**3
# share of each device's memory the planner keeps for dense parameters, activations and inputs
RESERVED_FRACTION = 0.15
# row block of the plan-independent initialisation: one random stream per (seed, table, block)
INIT_BLOCK_ROWS = 1 << 16


@dataclass(frozen=True)
class DevicePreset:
    """Capacities and bandwidth the planner assumes for one kind of machine.

    Args:
        compute_device: ``cuda`` or ``cpu`` (the planner's compute device).
        hbm_gb: device memory per GPU (GiB); 0 on CPU.
        hbm_bw_gbps: device memory bandwidth (GB/s) for the planner's cost model; None keeps torchrec's.
        host_ddr_gb: host memory per machine (GiB), shared by its ranks.
        ranks_per_host: GPUs (ranks) per machine, the default local world size.

    Example::

        DEVICES["h100"].hbm_gb      # 80.0
    """

    compute_device: str
    hbm_gb: float
    hbm_bw_gbps: Optional[float]
    host_ddr_gb: float
    ranks_per_host: int


# Nominal figures: H100 SXM5 80 GB HBM3 at 3.35 TB/s, H200 SXM 141 GB HBM3e at 4.8 TB/s, 8 GPUs and 2 TB of
# host memory per machine (DGX/HGX H100 and H200). Override any of them with sharding.hbm_gb / host_ddr_gb.
DEVICES: Dict[str, DevicePreset] = {
    "h100": DevicePreset("cuda", 80.0, 3350.0, 2048.0, 8),
    "h200": DevicePreset("cuda", 141.0, 4800.0, 2048.0, 8),
    "cpu": DevicePreset("cpu", 0.0, None, 256.0, 1),
}


@dataclass
class Capacities:
    """What the topology says about one rank (resolved from config, the live device, or a preset)."""

    device_type: str
    compute_device: str
    hbm_bytes: int
    ddr_bytes: int
    hbm_bw_gbps: Optional[float]
    source: str

    def describe(self) -> str:
        hbm = f"{self.hbm_bytes / GIB:.1f} GiB HBM, " if self.compute_device == "cuda" else ""
        return f"{self.device_type}: {hbm}{self.ddr_bytes / GIB:.1f} GiB DDR per rank ({self.source})"


def _host_memory_bytes() -> Optional[int]:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def capacities(
    cfg: ShardingConfig,
    local_world_size: int,
    device_type: str,
    device: Optional[torch.device] = None,
) -> Capacities:
    """Per-rank HBM/DDR for the planner: config values first, then the live ``device`` (when given and
    ``device_type`` is ``auto``), then the preset of ``device_type``.

    Args:
        cfg: the sharding section (``hbm_gb``, ``ddr_gb``, ``host_ddr_gb`` override everything).
        local_world_size: ranks per host (host memory is split evenly among them).
        device_type: ``auto``, ``cpu``, ``h100`` or ``h200``.
        device: the job's device, for ``auto``.

    Example::

        caps = capacities(ShardingConfig(), local_world_size=8, device_type="h100")
        caps.hbm_bytes // GIB       # 80
    """
    source = "preset"
    if device_type == "auto":
        if device is None:
            raise ConfigError(
                "sharding.device_type: 'auto' needs a live device; name one of "
                f"{', '.join(DEVICES)} to plan without one"
            )
        if device.type == "cuda":
            props = torch.cuda.get_device_properties(device)
            name = props.name.upper()
            preset = next((DEVICES[k] for k in ("h200", "h100") if k.upper() in name), None)
            hbm = float(props.total_memory) / GIB
            host = _host_memory_bytes()
            device_type = props.name
            bw = preset.hbm_bw_gbps if preset else None
            host_gb = host / GIB if host else (preset.host_ddr_gb if preset else DEVICES["h100"].host_ddr_gb)
            compute, source = "cuda", "this machine"
        else:
            host = _host_memory_bytes()
            hbm, bw, compute, device_type = 0.0, None, "cpu", "cpu"
            host_gb = host / GIB if host else DEVICES["cpu"].host_ddr_gb
            source = "this machine"
    else:
        if device_type not in DEVICES:
            raise ConfigError(f"device type '{device_type}' is not one of auto, {', '.join(DEVICES)}")
        preset = DEVICES[device_type]
        hbm, bw, compute, host_gb = preset.hbm_gb, preset.hbm_bw_gbps, preset.compute_device, preset.host_ddr_gb
    if cfg.hbm_gb is not None:
        hbm, source = cfg.hbm_gb, "config"
    if cfg.host_ddr_gb is not None:
        host_gb, source = cfg.host_ddr_gb, "config"
    ddr = cfg.ddr_gb if cfg.ddr_gb is not None else host_gb / max(local_world_size, 1)
    if cfg.ddr_gb is not None:
        source = "config"
    return Capacities(device_type, compute, int(hbm * GIB), int(ddr * GIB), bw, source)


def embedding_configs(module: nn.Module) -> Dict[str, Tuple[str, EmbeddingBagConfig]]:
    """Table name -> (fqn of its EmbeddingBagCollection, config) for every EBC inside ``module``."""
    out: Dict[str, Tuple[str, EmbeddingBagConfig]] = {}
    for fqn, m in module.named_modules():
        if isinstance(m, EmbeddingBagCollection):
            for cfg in m.embedding_bag_configs():
                out[cfg.name] = (fqn, cfg)
    return out


def embedding_tables(module: nn.Module) -> Dict[str, int]:
    """Table name -> rows for every EmbeddingBagCollection inside ``module``."""
    return {name: cfg.num_embeddings for name, (_, cfg) in embedding_configs(module).items()}


def constraints(module: nn.Module, cfg: ShardingConfig) -> Dict[str, ParameterConstraints]:
    """Planner constraints per table: allowed sharding types, kernels, pooling factor and column-wise shard
    width (global, then per-table). A table allowed ``data_parallel`` also gets the ``dense`` kernel (the only
    one data-parallel tables have) unless its kernels are given explicitly."""
    tables = embedding_tables(module)
    for name in cfg.tables:
        if name not in tables:
            import difflib

            close = difflib.get_close_matches(name, list(tables), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"sharding.tables: '{name}' is not an embedding table of the model{hint}")
    out = {}
    for name in tables:
        per = cfg.tables.get(name)
        types = list((per.sharding_types if per and per.sharding_types else None) or cfg.sharding_types)
        if per and per.compute_kernels:
            kernels = list(per.compute_kernels)
        else:
            kernels = [cfg.compute_kernel]
            if "data_parallel" in types and "dense" not in kernels:
                kernels.append("dense")
        c = ParameterConstraints(sharding_types=types, compute_kernels=kernels)
        if per and per.pooling_factor is not None:
            c.pooling_factors = [per.pooling_factor]
        if per and per.min_partition is not None:
            c.min_partition = per.min_partition
        out[name] = c
    return out


def check_kernels(
    table_constraints: Dict[str, ParameterConstraints], the_sharder: EmbeddingBagCollectionSharder, compute_device: str
) -> None:
    """One line naming the table when none of its allowed sharding types takes any of its allowed kernels on
    ``compute_device`` (the planner would stop with a long RuntimeError); e.g. ``dense`` serves data_parallel
    only, ``fused_uvm_caching`` needs CUDA."""
    for name, c in table_constraints.items():
        offered = {t: the_sharder.compute_kernels(t, compute_device) for t in c.sharding_types or []}
        if offered and not any(k in kernels for kernels in offered.values() for k in c.compute_kernels or []):
            options = "; ".join(f"{t} takes {', '.join(k)}" for t, k in offered.items())
            raise ConfigError(
                f"sharding: table '{name}' allows kernels {', '.join(c.compute_kernels or [])} and "
                f"sharding types {', '.join(c.sharding_types)}, no pair of which works on "
                f"{compute_device} ({options}); set sharding.compute_kernel or "
                f"sharding.tables.{name}.compute_kernels / sharding_types"
            )


def sharder(cfg: ShardingConfig) -> EmbeddingBagCollectionSharder:
    return EmbeddingBagCollectionSharder(fused_params={"bounds_check_mode": BOUNDS_CHECK[cfg.bounds_check]})


def topology(
    cfg: ShardingConfig,
    world_size: int,
    local_world_size: int,
    device_type: str,
    device: Optional[torch.device] = None,
) -> Topology:
    """The planner's view of the job (capacities from :func:`capacities`).

    Args:
        cfg: the sharding section.
        world_size: ranks in the job.
        local_world_size: ranks per host (intra-host bandwidth, host memory split).
        device_type: ``auto`` (with ``device``), ``cpu``, ``h100`` or ``h200``; a torch device type
            (``cuda``/``cpu``) is read as ``auto``.
        device: the live device, for ``auto``.

    Example::

        topo = topology(ShardingConfig(), world_size=64, local_world_size=8, device_type="h100")
    """
    if device_type == "cuda":
        device_type = "auto"
    caps = capacities(cfg, local_world_size, device_type, device)
    kwargs = {}
    if caps.hbm_bw_gbps is not None:
        kwargs["hbm_mem_bw"] = caps.hbm_bw_gbps * GIB / 1000  # bytes per millisecond
    # Topology(...) directly works on every torchrec we support (TopologyFactory is new in 1.8, whose
    # Topology warns about direct construction: that warning is dropped)
    with quiet_library():  # torchrec 1.8's warning about direct construction
        return Topology(
            world_size=world_size,
            compute_device=caps.compute_device,
            hbm_cap=caps.hbm_bytes if caps.compute_device == "cuda" else None,
            ddr_cap=caps.ddr_bytes,
            local_world_size=local_world_size,
            **kwargs,
        )


def dense_storage_estimate(module: nn.Module, multiplier: float = 6.0) -> int:
    """Bytes the dense (non-embedding) part needs per rank: parameters x ``multiplier`` (parameter, optimizer
    state and DDP buckets: torchrec's heuristic), counted from shapes so meta tensors work too."""
    embedding = {id(p) for m in module.modules() if isinstance(m, EmbeddingBagCollection) for p in m.parameters()}
    size = sum(p.numel() * p.element_size() for p in module.parameters() if id(p) not in embedding)
    size += sum(b.numel() * b.element_size() for b in module.buffers())
    return int(size * multiplier)


def storage_reservation(module: nn.Module) -> HeuristicalStorageReservation:
    """torchrec's heuristic reservation (:data:`RESERVED_FRACTION` of each device, plus dense parts and inputs),
    with the dense estimate counted from shapes (:func:`dense_storage_estimate`)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # 1.8 suggests a fixed percentage; we want dense + inputs
        try:
            return HeuristicalStorageReservation(
                percentage=RESERVED_FRACTION, dense_tensor_estimate=max(dense_storage_estimate(module), 1)
            )
        except TypeError:  # torchrec without dense_tensor_estimate
            return HeuristicalStorageReservation(percentage=RESERVED_FRACTION)


# --- plan reports -------------------------------------------------------------------------------------------
@dataclass
class TablePlacement:
    """One table in the plan: how it is split and where its shards live."""

    name: str
    rows: int
    dim: int
    sharding_type: str
    compute_kernel: str
    ranks: List[int]
    shard_sizes: List[Tuple[int, int]]
    hbm_bytes: int
    ddr_bytes: int


@dataclass
class PlanReport:
    """The planner's choice in numbers: tables, per-rank HBM/DDR use and caps.

    Example::

        report = plan_report(module, cfg, world_size=8, local_world_size=8, device_type="h100",
                             batch_size=4096)[1]
        print(report.format())
    """

    world_size: int
    local_world_size: int
    batch_size: int
    capacities: Capacities
    tables: List[TablePlacement] = field(default_factory=list)
    hbm_used: List[int] = field(default_factory=list)
    ddr_used: List[int] = field(default_factory=list)
    hbm_cap: List[int] = field(default_factory=list)
    ddr_cap: List[int] = field(default_factory=list)
    planner_seconds: float = 0.0

    def format(self) -> str:
        """The plan as text: a table of tables, then per-rank memory (runs of equal ranks merged)."""
        c = self.capacities
        hosts = -(-self.world_size // max(self.local_world_size, 1))
        lines = [
            f"sharding plan: {self.world_size} {c.compute_device} rank(s) ({hosts} host(s) x "
            f"{self.local_world_size}), {c.describe()}, batch {self.batch_size} per rank, "
            f"planned in {self.planner_seconds:.1f} s",
            "",
            "| table | rows | dim | sharding | kernel | shards | ranks | memory |",
            "|---|---:|---:|---|---|---:|---|---:|",
        ]
        for t in self.tables:
            lines.append(
                f"| {t.name} | {t.rows:,} | {t.dim} | {t.sharding_type} | {t.compute_kernel} | "
                f"{len(t.shard_sizes)} | {_ranges(t.ranks)} | {_bytes(t.hbm_bytes + t.ddr_bytes)} |"
            )
        lines += [
            "",
            f"per-rank memory of the embedding shards (weights, optimizer state, lookup buffers); the "
            f"planner also reserves {RESERVED_FRACTION:.0%} of each cap, the dense part and the inputs:",
            "",
        ]
        gpu = c.compute_device == "cuda"
        lines += (
            ["| ranks | HBM used | HBM cap | DDR used | DDR cap |", "|---|---:|---:|---:|---:|"]
            if gpu
            else ["| ranks | DDR used | DDR cap |", "|---|---:|---:|"]
        )
        rows: List[Tuple[Tuple[str, ...], List[int]]] = []
        for r in range(self.world_size):
            cells = ((_gib(self.hbm_used[r]), _gib(self.hbm_cap[r])) if gpu else ()) + (
                _gib(self.ddr_used[r]),
                _gib(self.ddr_cap[r]),
            )
            if rows and rows[-1][0] == cells:
                rows[-1][1].append(r)
            else:
                rows.append((cells, [r]))
        for cells, ranks in rows:
            lines.append(f"| {_ranges(ranks)} | " + " | ".join(cells) + " |")
        total_hbm, total_ddr = sum(self.hbm_used), sum(self.ddr_used)
        lines += ["", f"total: {_bytes(total_hbm)} HBM, {_bytes(total_ddr)} DDR"]
        return "\n".join(lines)

    def summary(self) -> str:
        """The plan in one line: tables, sharding types and kernels, memory per rank against its cap.

        Example::

            report.summary()
            # 'sharding plan: 32 tables on 2 cpu ranks (30 table_wise, 2 data_parallel; kernels fused, dense),
            #  per rank 420.31 KiB to 468.05 KiB DDR of 11.77 GiB, planned in 0.1 s'
        """
        c = self.capacities
        types = ", ".join(f"{n} {kind}" for kind, n in Counter(t.sharding_type for t in self.tables).most_common())
        kernels = ", ".join(dict.fromkeys(t.compute_kernel for t in self.tables))
        memory = [f"{_spread(self.ddr_used)} DDR of {_bytes(max(self.ddr_cap, default=0))}"]
        if c.compute_device == "cuda":
            memory.insert(0, f"{_spread(self.hbm_used)} HBM of {_bytes(max(self.hbm_cap, default=0))}")
        ranks = f"{self.world_size} {c.compute_device} rank{'s' if self.world_size != 1 else ''}"
        return (
            f"sharding plan: {len(self.tables)} tables on {ranks} ({types}; "
            f"kernel{'s' if ',' in kernels else ''} {kernels}), per rank {', '.join(memory)}, "
            f"planned in {self.planner_seconds:.1f} s"
        )


def _spread(per_rank: Sequence[int]) -> str:
    """One byte count when every rank uses the same, else 'least to most'."""
    low, high = _bytes(min(per_rank, default=0)), _bytes(max(per_rank, default=0))
    return high if low == high else f"{low} to {high}"


def _gib(n: int) -> str:
    return _bytes(n)


def _bytes(n: float) -> str:
    """A byte count in the largest binary unit that keeps it >= 1 (GiB at most, with thousands separators)."""
    for unit, size in (("GiB", GIB), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size or unit == "KiB" and n > 0:
            return f"{n / size:,.2f} {unit}"
    return "0"


def _ranges(ranks: Sequence[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5'."""
    out: List[str] = []
    ranks = sorted(set(ranks))
    i = 0
    while i < len(ranks):
        j = i
        while j + 1 < len(ranks) and ranks[j + 1] == ranks[j] + 1:
            j += 1
        out.append(str(ranks[i]) if i == j else f"{ranks[i]}-{ranks[j]}")
        i = j + 1
    return ",".join(out)


class _ReportStats(Stats):
    """A planner ``Stats`` hook that keeps the chosen sharding options (torchrec's own table goes to its log)."""

    def __init__(self) -> None:
        self.best_plan: List[ShardingOption] = []
        self.run_time = 0.0

    def log(
        self,
        sharding_plan,
        topology,
        batch_size,
        storage_reservation,
        num_proposals,
        num_plans,
        run_time,
        best_plan,
        constraints=None,
        sharders=None,
        enumerator=None,
        debug=False,
        debug_stats=None,
    ) -> None:  # noqa: D102 - signature fixed by torchrec
        self.best_plan = list(best_plan)
        self.run_time = float(run_time)


def _report(stats: _ReportStats, topo: Topology, caps: Capacities, batch_size: int) -> PlanReport:
    world = topo.world_size
    report = PlanReport(world, topo.local_world_size, batch_size, caps, planner_seconds=stats.run_time)
    report.hbm_used, report.ddr_used = [0] * world, [0] * world
    report.hbm_cap = [d.storage.hbm for d in topo.devices]
    report.ddr_cap = [d.storage.ddr for d in topo.devices]
    for so in stats.best_plan:
        hbm = ddr = 0
        ranks: List[int] = []
        for shard in so.shards:
            s_hbm = shard.storage.hbm if shard.storage else 0
            s_ddr = shard.storage.ddr if shard.storage else 0
            hbm, ddr = hbm + s_hbm, ddr + s_ddr
            for r in _shard_ranks(so, shard, world):
                ranks.append(r)
                report.hbm_used[r] += s_hbm
                report.ddr_used[r] += s_ddr
        rows, dim = int(so.tensor.shape[0]), int(so.tensor.shape[1])
        report.tables.append(
            TablePlacement(
                so.name,
                rows,
                dim,
                so.sharding_type,
                so.compute_kernel,
                sorted(set(ranks)),
                [(int(s.size[0]), int(s.size[1])) for s in so.shards],
                hbm,
                ddr,
            )
        )
    return report


def _shard_ranks(so: ShardingOption, shard, world: int) -> List[int]:
    """Ranks holding ``shard`` (data-parallel shards have no rank: every rank holds a copy)."""
    if shard.rank is None:
        return list(range(world)) if so.sharding_type == "data_parallel" else []
    return [int(shard.rank)]


def plan_report(
    module: nn.Module,
    cfg: ShardingConfig,
    world_size: int,
    local_world_size: int,
    device_type: str,
    batch_size: int,
    pg: Optional[dist.ProcessGroup] = None,
    device: Optional[torch.device] = None,
) -> Tuple[ShardingPlan, PlanReport]:
    """A sharding plan for ``module`` and its report; collective (all ranks agree) when a process group is
    given. ``module`` may live on the meta device: planning allocates no table.

    Args:
        module: the module holding the EmbeddingBagCollection(s) (with fused optimizers attached, so the
            planner counts their state).
        cfg: the sharding section (constraints, capacities).
        world_size, local_world_size: the job's ranks and ranks per host.
        device_type: ``auto`` (with ``device``), ``cuda``, ``cpu``, ``h100`` or ``h200``.
        batch_size: per-rank batch size (the planner's cost model and input storage).
        pg: plan on rank 0 and broadcast (a live job); None plans locally.
        device: the live device for ``auto``.

    Raises:
        ConfigError: when no plan fits (one line: what was asked and what to change).

    Example::

        plan, report = plan_report(meta_module, cfg.sharding, 64, 8, "h100", batch_size=4096)
        print(report.format())
    """
    if world_size < 1 or local_world_size < 1:
        raise ConfigError(f"world size ({world_size}) and ranks per host ({local_world_size}) must be >= 1")
    if device_type == "cuda":
        device_type = "auto"
    caps = capacities(cfg, local_world_size, device_type, device)
    topo = topology(cfg, world_size, local_world_size, device_type, device)
    stats = _ReportStats()
    sharders: List = [sharder(cfg)]
    table_constraints = constraints(module, cfg)
    check_kernels(table_constraints, sharders[0], topo.compute_device)
    planner = EmbeddingShardingPlanner(
        topology=topo,
        batch_size=batch_size,
        constraints=table_constraints,
        stats=stats,
        storage_reservation=storage_reservation(module),
        debug=False,
    )
    try:
        with quiet_library():  # what the planner logs about data-parallel tables
            if pg is not None:
                the_plan = planner.collective_plan(module, sharders, pg)
            else:
                the_plan = planner.plan(module, sharders)
    except PlannerError as e:  # the planner's messages are long; keep the first line and say what to change
        first = (str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__).strip().rstrip(".")
        total = sum(cfg_.num_embeddings * cfg_.embedding_dim * 4 for _, cfg_ in embedding_configs(module).values())
        raise ConfigError(
            f"sharding: no plan fits {world_size} x {caps.describe()} (tables hold {total / GIB:,.1f} GiB of "
            f"weights before optimizer state; planner: {first[:200]}); allow more sharding types or kernels "
            "(row_wise, fused_uvm_caching), more ranks or more memory (sharding.hbm_gb / sharding.ddr_gb)"
        ) from None
    chosen = getattr(planner, "_best_plan", None)
    if not stats.best_plan and chosen:  # no Stats call happened (e.g. a plan loaded rather than searched)
        stats.best_plan = list(chosen)
    return the_plan, _report(stats, topo, caps, batch_size)


# --- plan-independent initialisation ------------------------------------------------------------------------
def _block_seed(seed: int, table: str, block: int) -> int:
    """A 63-bit seed for one row block of one table (mixes the three inputs; SplitMix64 finaliser)."""
    mask = (1 << 64) - 1
    z = (seed * 0x9E3779B97F4A7C15 + zlib.crc32(table.encode()) * 0xBF58476D1CE4E5B9 + block) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return (z ^ (z >> 31)) & ((1 << 63) - 1)


def _fill(out: torch.Tensor, row0: int, col0: int, cfg: EmbeddingBagConfig, seed: int) -> None:
    """Write rows ``[row0, row0 + len(out))`` and columns ``[col0, col0 + out.shape[1])`` of the table's
    plan-independent initial values into ``out``."""
    lo, hi = cfg.get_weight_init_min(), cfg.get_weight_init_max()
    rows, cols = out.shape
    gen = torch.Generator(device=out.device)
    first, last = row0 // INIT_BLOCK_ROWS, (row0 + rows - 1) // INIT_BLOCK_ROWS
    for block in range(first, last + 1):
        start = block * INIT_BLOCK_ROWS
        n = min(INIT_BLOCK_ROWS, cfg.num_embeddings - start)
        gen.manual_seed(_block_seed(seed, cfg.name, block))
        values = torch.rand(n, cfg.embedding_dim, generator=gen, device=out.device, dtype=torch.float32)
        a, b = max(row0, start), min(row0 + rows, start + n)
        chunk = values[a - start : b - start, col0 : col0 + cols]
        out[a - row0 : b - row0].copy_(chunk.mul_(hi - lo).add_(lo))


def table_state_key(state: Mapping[str, object], fqn: str, table: str) -> str:
    """The key of table ``table`` of the EmbeddingBagCollection ``fqn`` in a sharded model's state dict."""
    suffix = f"{fqn}.embedding_bags.{table}.weight"
    key = next((k for k in state if k == suffix or k.endswith("." + suffix)), None)
    if key is None:
        raise RuntimeError(f"embedding table '{table}' not found in the sharded model's state")
    return key


@torch.no_grad()
def init_embeddings(dmp: nn.Module, tables: Dict[str, Tuple[str, EmbeddingBagConfig]], seed: int) -> int:
    """Re-initialise every embedding table of a sharded model from ``(seed, table, row block)``: uniform in the
    table's ``[weight_init_min, weight_init_max]``, the same values whatever the world size and plan (on one
    device type). Each rank fills only its own shards. Returns the number of shards written.

    Args:
        dmp: the DistributedModelParallel model.
        tables: :func:`embedding_configs` of the module before sharding.
        seed: the run's seed.

    Example::

        tables = embedding_configs(module)
        dmp = DistributedModelParallel(module, ...)
        init_embeddings(dmp, tables, seed=0)
    """
    state = dmp.state_dict()
    written = 0
    for name, (fqn, cfg) in tables.items():
        value = state[table_state_key(state, fqn, name)]
        if hasattr(value, "local_shards"):  # ShardedTensor: row-, column- or table-wise shards of this rank
            for shard in value.local_shards():
                row0, col0 = (int(x) for x in shard.metadata.shard_offsets)
                _fill(shard.tensor, row0, col0, cfg, seed)
                written += 1
        elif hasattr(value, "to_local"):  # DTensor
            raise RuntimeError(f"embedding table '{name}': DTensor state is not supported")
        else:  # data-parallel: the whole table on every rank
            _fill(value, 0, 0, cfg, seed)
            written += 1
    return written


class SingleRankWrapper(DataParallelWrapper):
    """DMP's data-parallel wrapper for a one-rank job: the dense part is moved to the device and left unwrapped.

    DistributedDataParallel over a one-rank group all-reduces every dense gradient with itself (a gloo or NCCL
    collective per bucket, forward and backward hooks) and changes no value; without it the gradients, the
    state-dict keys and ``dmp.module`` are the same.
    """

    def wrap(self, dmp: DistributedModelParallel, env: ShardingEnv, device: torch.device) -> None:
        dmp.module.to(device)


def data_parallel_wrapper(world_size: int) -> DataParallelWrapper:
    """DDP around the dense part on more than one rank (torchrec's default), nothing at world size 1."""
    return SingleRankWrapper() if world_size == 1 else DefaultDataParallelWrapper()


def shard(
    module: nn.Module,
    cfg: ShardingConfig,
    device: torch.device,
    batch_size: int,
    seed: Optional[int] = None,
) -> DistributedModelParallel:
    """Wrap ``module`` in DistributedModelParallel with a planner-made plan (the process group must exist).

    Args:
        module: the module holding the model's EmbeddingBagCollection (on the meta device).
        cfg: the sharding section.
        device: this rank's device.
        batch_size: per-rank batch size.
        seed: when given, tables are initialised plan-independently (:func:`init_embeddings`).

    The plan's report is kept as ``dmp.plan_report`` (see :class:`PlanReport`) and summed up in one line on
    rank 0 (the whole table at debug level: ``recsys -v``); the tables' configs as ``dmp.embedding_tables``
    (see :func:`embedding_configs`).

    Example::

        dmp = shard(TrainModule(model, loss), cfg.sharding, torch.device("cpu"), batch_size=4096, seed=0)
    """
    world_size = dist.get_world_size()
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    tables = embedding_configs(module)
    device_type = cfg.device_type
    if cfg.device_type != "auto" and DEVICES[cfg.device_type].compute_device != device.type:
        raise ConfigError(
            f"sharding.device_type: '{cfg.device_type}' describes {DEVICES[cfg.device_type].compute_device} "
            f"ranks but this job runs on {device.type}; use 'auto'"
        )
    the_plan, report = plan_report(
        module, cfg, world_size, local_world_size, device_type, batch_size, dist.GroupMember.WORLD, device
    )
    with quiet_library():
        dmp = DistributedModelParallel(
            module,
            device=device,
            plan=the_plan,
            sharders=[sharder(cfg)],
            data_parallel_wrapper=data_parallel_wrapper(world_size),
        )
    if seed is not None:
        init_embeddings(dmp, tables, seed)
    dmp.plan_report = report
    dmp.embedding_tables = tables
    if dist.get_rank() == 0:
        log.info("%s (the full table: -v; a training run writes it to plan.txt)", report.summary())
        log.debug("%s", report.format())
    return dmp
