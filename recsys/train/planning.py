"""Sharding plans for a config at any world size and device, without data, devices or a process group.

The schema comes from the dataset spec alone (every sparse feature declares ``num_embeddings``), the model is
built with its EmbeddingBagCollection on the meta device (nothing is allocated), the fused embedding optimizer is
attached (so the planner counts its state), and torchrec's planner runs against a
:class:`~torchrec.distributed.planner.Topology` of the requested world size and device (``recsys plan``).

Example::

    cfg = load_config("configs/plan_billion.yaml")
    for report in plan_config(cfg, world_sizes=[8, 64, 128], device_type="h100"):
        print(report.format())
"""

import time
from dataclasses import replace
from typing import List, Optional, Sequence, cast

from recsys.config import Config, DeviceType, check_device_support
from recsys.data.dataset import Dataset
from recsys.data.spec import spec_of
from recsys.errors import ConfigError
from recsys.models.base import build_model
from recsys.schema import Schema
from recsys.train.assembly import train_module
from recsys.train.sharding import DEVICES, PlanReport, plan_report

# torchrec's planner enumerates every rank (about 3 minutes at 2048 ranks on 2 CPU cores): larger jobs are refused
# at once rather than planned for an hour
MAX_PLAN_WORLD_SIZE = 4096


def declared_schema(cfg: Config) -> Schema:
    """The config's schema from its dataset spec alone (see :meth:`Dataset.declared_schema`)."""
    spec = spec_of(cfg)
    return Dataset(spec, cfg.resolve(cfg.data.path) if cfg.data.path else None).declared_schema(cfg.model.embedding_dim)


def plan_config(
    cfg: Config,
    world_sizes: Sequence[int],
    device_type: str,
    ranks_per_host: Optional[int] = None,
    batch_size: Optional[int] = None,
) -> List[PlanReport]:
    """Plan ``cfg``'s model for each world size; no table is allocated.

    Args:
        cfg: the run config (model, dataset spec, sharding constraints and capacities).
        world_sizes: total ranks of each plan.
        device_type: ``h100``, ``h200`` or ``cpu`` (capacities from :data:`recsys.train.sharding.DEVICES`
            unless ``sharding.hbm_gb`` / ``ddr_gb`` / ``host_ddr_gb`` are set).
        ranks_per_host: ranks per machine (default: the device type's, capped by the world size).
        batch_size: per-rank batch size (default ``data.batch_size``).

    Raises:
        ConfigError: a spec without table sizes, or no plan fits (one line).

    Example::

        report = plan_config(cfg, [64], "h200")[0]
        report.hbm_used[0]      # bytes of embedding shards on rank 0
    """
    if device_type not in DEVICES:
        raise ConfigError(f"device type '{device_type}' is not one of {', '.join(DEVICES)}")
    check_device_support(cfg.sharding, DEVICES[device_type].compute_device)
    schema = declared_schema(cfg)
    model = build_model(cfg.model, schema, source="config")
    module = train_module(
        model, schema, cfg.train.task_weights, cfg.train.embedding_optimizer, DEVICES[device_type].compute_device
    )
    sharding = replace(cfg.sharding, device_type=cast(DeviceType, device_type))
    if ranks_per_host is not None and ranks_per_host < 1:
        raise ConfigError(f"ranks per host must be >= 1, got {ranks_per_host}")
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    for world in world_sizes:
        if not 1 <= world <= MAX_PLAN_WORLD_SIZE:
            raise ConfigError(f"world size must be in [1, {MAX_PLAN_WORLD_SIZE}], got {world}")
    reports = []
    for world in world_sizes:
        per_host = min(ranks_per_host if ranks_per_host is not None else DEVICES[device_type].ranks_per_host, world)
        start = time.perf_counter()
        report = plan_report(
            module,
            sharding,
            world,
            per_host,
            device_type,
            batch_size if batch_size is not None else cfg.data.batch_size,
        )[1]
        report.planner_seconds = time.perf_counter() - start
        reports.append(report)
    return reports
