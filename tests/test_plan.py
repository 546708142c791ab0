"""Planning: topology capacities, planner constraints from the config, and ``recsys plan`` without data."""

import os
import time

import pytest
import torch
from conftest import REPO

from recsys.cli import main
from recsys.config import ModelConfig, ShardingConfig, TableShardingConfig, load_config
from recsys.errors import ConfigError
from recsys.models.base import build_model
from recsys.schema import Schema, SparseFeature
from recsys.train.planning import declared_schema, plan_config
from recsys.train.sharding import GIB, capacities, constraints, topology

BILLION = os.path.join(REPO, "configs/plan_billion.yaml")


def test_presets_and_overrides_set_the_topology():
    h100 = topology(ShardingConfig(), world_size=16, local_world_size=8, device_type="h100")
    assert h100.world_size == 16 and h100.local_world_size == 8 and h100.compute_device == "cuda"
    assert {d.storage.hbm for d in h100.devices} == {80 * GIB}
    assert {d.storage.ddr for d in h100.devices} == {2048 * GIB // 8}
    h200 = topology(ShardingConfig(), world_size=8, local_world_size=8, device_type="h200")
    assert {d.storage.hbm for d in h200.devices} == {141 * GIB}
    assert h200.hbm_mem_bw > h100.hbm_mem_bw
    custom = topology(ShardingConfig(hbm_gb=40, host_ddr_gb=512), world_size=4, local_world_size=4,
                      device_type="h100")
    assert {d.storage.hbm for d in custom.devices} == {40 * GIB}
    assert {d.storage.ddr for d in custom.devices} == {128 * GIB}
    per_rank = capacities(ShardingConfig(ddr_gb=10), local_world_size=4, device_type="h100")
    assert per_rank.ddr_bytes == 10 * GIB and per_rank.source == "config"


def test_live_cpu_topology_splits_this_hosts_memory_among_its_ranks():
    caps = capacities(ShardingConfig(), local_world_size=2, device_type="auto", device=torch.device("cpu"))
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert caps.compute_device == "cpu" and caps.hbm_bytes == 0
    assert abs(caps.ddr_bytes - host // 2) <= 1
    with pytest.raises(ConfigError, match="'auto' needs a live device"):
        capacities(ShardingConfig(), local_world_size=1, device_type="auto")


def test_constraints_come_from_the_config():
    schema = Schema(sparse=(SparseFeature("user_id", 1000, 16, group="user"),
                            SparseFeature("item_id", 100, 16, group="item"),
                            SparseFeature("hour", 24, 16, group="context")))
    model = build_model(ModelConfig(name="wide_deep", params={"hidden": [8]}), schema)
    cfg = ShardingConfig(
        sharding_types=["table_wise", "data_parallel"],
        tables={"user_id": TableShardingConfig(sharding_types=["column_wise"], min_partition=8, pooling_factor=2.0),
                "item_id": TableShardingConfig(compute_kernels=["fused"])},
    )
    got = constraints(model, cfg)
    assert got["user_id"].sharding_types == ["column_wise"] and got["user_id"].min_partition == 8
    assert got["user_id"].pooling_factors == [2.0] and got["user_id"].compute_kernels == ["fused"]
    # data_parallel tables only have the dense kernel: it is allowed unless kernels are given per table
    assert got["hour"].sharding_types == ["table_wise", "data_parallel"]
    assert got["hour"].compute_kernels == ["fused", "dense"]
    assert got["item_id"].compute_kernels == ["fused"]
    assert got["hour__wide"].compute_kernels == ["fused", "dense"]
    with pytest.raises(ConfigError, match="'user_ids' is not an embedding table of the model; did you mean 'user_id'"):
        constraints(model, ShardingConfig(tables={"user_ids": TableShardingConfig()}))


def test_sharding_config_is_checked():
    with pytest.raises(ConfigError, match="min_partition' must be a positive multiple of 4"):
        load_config(BILLION, ["sharding.tables.user_id.min_partition=6"])
    with pytest.raises(ConfigError, match="unknown kernel 'fused_uvm_cache'; did you mean 'fused_uvm_caching'"):
        load_config(BILLION, ["sharding.tables.user_id.compute_kernels=[fused_uvm_cache]"])
    with pytest.raises(ConfigError, match="not both"):
        load_config(BILLION, ["sharding.ddr_gb=10", "sharding.host_ddr_gb=100"])
    with pytest.raises(ConfigError, match=r"compute kernel\(s\) \['fused_uvm_caching'\] need CUDA"):
        load_config(BILLION, ["device=cpu", "sharding.sharding_types=[table_wise]", "sharding.tables={}",
                              "sharding.compute_kernel=fused_uvm_caching"])


def test_billion_row_schema_comes_from_the_spec_alone():
    cfg = load_config(BILLION)
    schema = declared_schema(cfg)
    assert schema.feature("user_id").num_embeddings == 10**9
    assert schema.feature("host_id").num_embeddings == 10**8
    assert schema.num_scenarios == 8
    synthetic = load_config(os.path.join(REPO, "configs/wide_deep_synthetic.yaml"))
    with pytest.raises(ConfigError, match="'user_id', .* declare no num_embeddings"):
        declared_schema(synthetic)


def test_recsys_plan_prints_billion_row_plans_for_8_64_and_128_gpus(capsys):
    start = time.perf_counter()
    assert main(["plan", "-c", BILLION, "--world-size", "8", "64", "128"]) == 0
    elapsed = time.perf_counter() - start
    out = capsys.readouterr().out
    assert elapsed < 60, f"planning took {elapsed:.0f} s"
    plans = out.split("sharding plan: ")[1:]
    assert len(plans) == 3
    for world, text in zip((8, 64, 128), plans):
        assert text.startswith(f"{world} cuda rank(s) ({world // 8} host(s) x 8), h100: 80.0 GiB HBM")
        user = next(line for line in text.splitlines() if line.startswith("| user_id | "))
        assert "| 1,000,000,000 | 64 |" in user
        # a billion 64-wide rows (238 GiB) cannot live on one GPU: split by rows over every rank or over a host
        assert (f"| row_wise | fused | {world} |" in user) or ("| table_row_wise | fused | 8 |" in user), user
        memory = text.split("| ranks | HBM used | HBM cap | DDR used | DDR cap |")[1]
        ranks = [line for line in memory.splitlines() if line.startswith("| ") and "GiB" in line]
        assert ranks and all("| 80.00 GiB |" in line for line in ranks)
    first_ranks = plans[0].split("| ranks | HBM used |")[1].splitlines()[2:10]
    used = [float(line.split("|")[2].split()[0].replace(",", "")) for line in first_ranks]
    assert len(used) == 8 and all(30 < u < 68 for u in used)  # ~290 GiB over 8 GPUs, under the 85% usable


def test_recsys_plan_refuses_when_the_tables_do_not_fit(capsys):
    assert main(["plan", "-c", BILLION, "--world-size", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("error: sharding: no plan fits 2 x h100: 80.0 GiB HBM")
    assert "283.9 GiB of weights" in err[0] and "fused_uvm_caching" in err[0]
    # the device type can come from an override too; two H200s are still too small
    assert main(["plan", "-c", BILLION, "--world-size", "2", "--set", "sharding.device_type=h200"]) == 2
    assert capsys.readouterr().err.startswith("error: sharding: no plan fits 2 x h200: 141.0 GiB HBM")
    # with host memory and an HBM cache for the user table it fits
    assert main(["plan", "-c", BILLION, "--world-size", "2",
                 "--set", "sharding.tables.user_id.compute_kernels=[fused,fused_uvm_caching]"]) == 0
    out = capsys.readouterr().out
    user = next(line for line in out.splitlines() if line.startswith("| user_id | "))
    assert "fused_uvm_caching" in user


def test_plan_config_h200_and_cpu_presets():
    cfg = load_config(BILLION)
    h200 = plan_config(cfg, [8], "h200")[0]
    assert h200.capacities.hbm_bytes == 141 * GIB and max(h200.hbm_used) < 141 * GIB
    small = load_config(BILLION, ["device=cpu", "sharding.sharding_types=[table_wise,column_wise]",
                                  "sharding.host_ddr_gb=1024", "sharding.tables={}"])
    cpu = plan_config(small, [4], "cpu", ranks_per_host=1, batch_size=1024)[0]
    assert cpu.capacities.compute_device == "cpu" and cpu.batch_size == 1024
    assert sum(cpu.hbm_used) == 0 and sum(cpu.ddr_used) > 238 * GIB  # the user table lives in host memory
