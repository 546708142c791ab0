import numpy as np
import pytest
import torch
from calib_helpers import materialise

from recsys.config import ModelConfig
from recsys.data.columns import Columns, Ragged
from recsys.models import build_model, model_names
from recsys.schema import DenseFeature, Schema, SparseFeature, Task

SCHEMA = Schema(
    sparse=(SparseFeature("user", 20, 8, group="user"), SparseFeature("host", 10, 8, group="host"),
            SparseFeature("tags", 6, 8, multi_hot=True, pooling="mean")),
    dense=(DenseFeature("x"),),
    tasks=(Task("ctr"), Task("stay", kind="regression", depends_on="ctr")),
    user_feature="user",
)


def tiny_batch(n=6, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 3, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    cols = Columns(
        dense=rng.normal(size=(n, 1)).astype(np.float32),
        sparse={"user": rng.integers(0, 20, n), "host": rng.integers(0, 10, n),
                "tags": Ragged(rng.integers(0, 6, offsets[-1]), offsets)},
        labels={"ctr": (rng.random(n) < 0.5).astype(np.float32), "stay": rng.random(n).astype(np.float32)},
        scenario=np.zeros(n, np.int64), user=rng.integers(0, 20, n), weights=np.ones(n, np.float32),
        row_id=np.arange(n),
    )
    return cols.to_batch(SCHEMA.feature_names)


@pytest.mark.parametrize("name", ["wide_deep", "dnn"])
def test_outputs_per_task_and_gradients(name):
    torch.manual_seed(0)
    model = materialise(build_model(ModelConfig(name=name, params={"hidden": [16, 8]}), SCHEMA), 0.1)
    batch = tiny_batch()
    out = model(batch)
    assert set(out) == {"ctr", "stay"} and all(v.shape == (6,) for v in out.values())
    sum(v.sum() for v in out.values()).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    for table in ("user", "host", "tags"):
        g = grads[f"sparse_arch.ebc.embedding_bags.{table}.weight"]
        assert g is not None and g.abs().sum() > 0
    if name == "wide_deep":
        g = grads["sparse_arch.ebc.embedding_bags.user__wide.weight"]
        seen = set(batch.sparse["user"].values().tolist())
        touched = set(torch.nonzero(g.abs().sum(1)).flatten().tolist())
        assert touched == seen  # the wide weights of exactly the users in the batch


def test_wide_part_is_linear_in_wide_weights():
    torch.manual_seed(0)
    model = materialise(build_model(ModelConfig(name="wide_deep", params={"hidden": [8]}), SCHEMA), 0.1)
    batch = tiny_batch()
    base = model(batch)["ctr"].detach()
    with torch.no_grad():
        model.sparse_arch.ebc.embedding_bags["host__wide"].weight[:, 0] += 1.0  # +1 on every host's ctr weight
    moved = model(batch)["ctr"].detach()
    np.testing.assert_allclose((moved - base).numpy(), np.ones(6), rtol=1e-5)


def test_registry_lists_models():
    assert {"wide_deep", "dnn"} <= set(model_names())
