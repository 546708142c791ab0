"""DistributedModelParallel with the planner: constraints from the config, a topology from the real job.

Every embedding table of the model is sharded by torchrec's planner within the sharding types and compute
kernels the config allows; FBGEMM's bounds check is on (``fatal`` by default), so an out-of-range id raises
instead of reading another row's memory.
"""

import logging
import os
from typing import Dict, List, Optional

import torch
import torch.distributed as dist
from fbgemm_gpu.split_table_batched_embeddings_ops_common import BoundsCheckMode
from torch import nn
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.types import ShardingPlan
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from recsys.config import ShardingConfig
from recsys.errors import ConfigError

log = logging.getLogger(__name__)

BOUNDS_CHECK = {
    "fatal": BoundsCheckMode.FATAL,
    "warning": BoundsCheckMode.WARNING,
    "ignore": BoundsCheckMode.IGNORE,
    "none": BoundsCheckMode.NONE,
}
GIB = 1024**3


def embedding_tables(module: nn.Module) -> Dict[str, int]:
    """Table name -> rows for every EmbeddingBagCollection inside ``module``."""
    out: Dict[str, int] = {}
    for m in module.modules():
        if isinstance(m, EmbeddingBagCollection):
            for cfg in m.embedding_bag_configs():
                out[cfg.name] = cfg.num_embeddings
    return out


def constraints(module: nn.Module, cfg: ShardingConfig) -> Dict[str, ParameterConstraints]:
    """Planner constraints per table: allowed sharding types and kernels (global, then per-table)."""
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
        types = (per.sharding_types if per and per.sharding_types else None) or cfg.sharding_types
        kernels = (per.compute_kernels if per and per.compute_kernels else None) or [cfg.compute_kernel]
        kwargs = {"sharding_types": list(types), "compute_kernels": list(kernels)}
        if per and per.pooling_factor is not None:
            kwargs["pooling_factors"] = [per.pooling_factor]
        out[name] = ParameterConstraints(**kwargs)
    return out


def sharder(cfg: ShardingConfig) -> EmbeddingBagCollectionSharder:
    return EmbeddingBagCollectionSharder(fused_params={"bounds_check_mode": BOUNDS_CHECK[cfg.bounds_check]})


def topology(cfg: ShardingConfig, world_size: int, local_world_size: int, device_type: str) -> Topology:
    """The planner's view of the job; memory caps in bytes per rank (defaults: the planner's own)."""
    kwargs = {"world_size": world_size, "compute_device": device_type, "local_world_size": local_world_size}
    if cfg.hbm_gb is not None:
        kwargs["hbm_cap"] = int(cfg.hbm_gb * GIB)
    if cfg.ddr_gb is not None:
        kwargs["ddr_cap"] = int(cfg.ddr_gb * GIB)
    return Topology(**kwargs)


def plan(
    module: nn.Module,
    cfg: ShardingConfig,
    world_size: int,
    local_world_size: int,
    device_type: str,
    batch_size: int,
    pg: Optional[dist.ProcessGroup] = None,
) -> ShardingPlan:
    """A sharding plan for ``module``; collective (all ranks agree) when a process group is given."""
    planner = EmbeddingShardingPlanner(
        topology=topology(cfg, world_size, local_world_size, device_type),
        batch_size=batch_size,
        constraints=constraints(module, cfg),
        debug=False,
    )
    sharders: List = [sharder(cfg)]
    try:
        if pg is not None:
            return planner.collective_plan(module, sharders, pg)
        return planner.plan(module, sharders)
    except Exception as e:  # the planner's errors are long; keep the first line and say what to change
        if type(e).__name__ in ("PlannerError",):
            first = str(e).strip().splitlines()[0]
            raise ConfigError(
                f"sharding: the planner found no plan ({first}); allow more sharding types, more ranks or "
                "more memory (sharding.hbm_gb / sharding.ddr_gb)"
            ) from None
        raise


def shard(
    module: nn.Module,
    cfg: ShardingConfig,
    device: torch.device,
    batch_size: int,
) -> DistributedModelParallel:
    """Wrap ``module`` in DistributedModelParallel with a planner-made plan (the process group must exist)."""
    world_size = dist.get_world_size()
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    the_plan = plan(module, cfg, world_size, local_world_size, device.type, batch_size, dist.GroupMember.WORLD)
    return DistributedModelParallel(module, device=device, plan=the_plan, sharders=[sharder(cfg)])
