"""The optimizers a run gets: a table trains the same whatever its sharding type.

Fused tables get the embedding optimizer inside FBGEMM's backward. A data-parallel table has no fused kernel
(only ``dense``); it must still get the embedding optimizer (here row-wise Adagrad, lr 0.05), not the dense
one (Adam, lr 1e-3), and stay out of gradient clipping like the fused tables. Before this was so, such a
table moved 0.005 in five steps where the same table sharded table-wise moved 0.31.
"""

import pytest
import torch
from conftest import make_config

from recsys.train.optim import dense_kernel_tables
from recsys.train.trainer import Trainer

STEPS = 5
DATA_PARALLEL = ("sharding.tables={hour: {sharding_types: [data_parallel]}, "
                 "hour__wide: {sharding_types: [data_parallel]}, gender: {sharding_types: [data_parallel]}}")


def local(value: torch.Tensor) -> torch.Tensor:
    if hasattr(value, "local_shards"):  # a sharded table at world size 1: its shards side by side
        return torch.cat([s.tensor for s in value.local_shards()], dim=1).detach().clone()
    return value.detach().clone()


def trained(tiny_world, tmp_path, name, extra):
    cfg = make_config(str(tmp_path / name), tiny_world, extra=[
        f"train.max_steps={STEPS}", "train.pipeline=plain", "train.grad_clip_norm=0.01"] + extra)
    trainer = Trainer(cfg)
    before = {k: local(v) for k, v in trainer.dmp.state_dict().items()}
    result = trainer.fit()
    after = {k: local(v) for k, v in trainer.dmp.state_dict().items()}
    return trainer, before, after, result


def test_a_data_parallel_table_trains_as_it_does_table_wise(tiny_world, tmp_path):
    tw, tw_before, tw_after, tw_result = trained(tiny_world, tmp_path, "table_wise", [])
    dp, dp_before, dp_after, dp_result = trained(tiny_world, tmp_path, "data_parallel", [DATA_PARALLEL])

    tables = dense_kernel_tables(dp.dmp)
    assert {k.split(".")[-2] for k in tables} == {"hour", "hour__wide", "gender"}
    assert not dense_kernel_tables(tw.dmp)
    assert "embedding_dense" in {name for name, _ in dp.optimizer.optimizers}

    for key in ("hour", "hour__wide", "gender", "user_id"):
        weight = f"model.sparse_arch.ebc.embedding_bags.{key}.weight"
        torch.testing.assert_close(dp_before[weight], tw_before[weight], rtol=0, atol=0)  # same start
        moved = (tw_after[weight] - tw_before[weight]).abs().max()
        assert moved > 0.05, (key, moved)  # row-wise Adagrad at lr 0.05, unclipped
        torch.testing.assert_close(dp_after[weight], tw_after[weight], rtol=1e-4, atol=1e-5)
    assert dp_result["valid"]["ctr/auc"] == pytest.approx(tw_result["valid"]["ctr/auc"], abs=1e-4)


@pytest.mark.parametrize("name,weight_decay", [("adam", 0.0), ("adam", 0.01), ("adamw", 0.01), ("adagrad", 0.001),
                                               ("sgd", 0.001)])
def test_dense_optimizers_use_multi_tensor_kernels_with_the_values_of_the_per_parameter_loop(name, weight_decay):
    """dense_optimizer asks for torch's foreach kernels (fewer ops per step); they must move every parameter
    exactly as torch's per-parameter loop (its CPU default) does, so training runs are unchanged."""
    import copy

    from recsys.config import OptimizerConfig
    from recsys.train.optim import dense_optimizer

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    twin = copy.deepcopy(model)
    start = [p.detach().clone() for p in model.parameters()]
    cfg = OptimizerConfig(name=name, lr=0.01, weight_decay=weight_decay)
    fast = dense_optimizer(model.parameters(), cfg)
    assert all(g["foreach"] for g in fast.param_groups)
    loop = dense_optimizer(twin.parameters(), cfg)
    for group in loop.param_groups:
        group["foreach"] = False  # torch's per-parameter implementation (read at every step)
    for _ in range(10):
        x = torch.randn(32, 20)
        for m, opt in ((model, fast), (twin, loop)):
            opt.zero_grad()
            m(x).square().mean().backward()
            opt.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters())), name
    assert not any(torch.equal(p, q) for p, q in zip(model.parameters(), start)), name  # every parameter moved
