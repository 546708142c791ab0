"""Embeddings read from the lookup's one KeyedTensor (recsys.modules.sparse): the columns a model asks for are the
ones of its features, and every registered model computes bit for bit what it computed when SparseArch handed
it one view per feature (the reference below is that implementation), forward and backward, sharded by DMP."""


import pytest
import torch
from torchrec.optim.optimizers import in_backward_optimizer_filter
from torchrec.sparse.jagged_tensor import KeyedTensor

from recsys.config import EmbeddingOptimizerConfig, ModelConfig, ShardingConfig, TrainConfig
from recsys.models import build_model, model_names
from recsys.modules.sparse import Embeddings, SparseArch, keyed_columns, keyed_stack
from recsys.train.assembly import assemble
from recsys.train.dist import init_distributed
from tests.conftest import live_batch

CPU = torch.device("cpu")


def per_feature_forward(self: SparseArch, features) -> Embeddings:
    """SparseArch.forward as it was: the KeyedTensor split into one view per feature."""
    pooled = self.ebc(features).to_dict()
    return Embeddings(features={name: pooled[key] for name, key in self._keys.items()},
                      wide={name: pooled[key] for name, key in self._wide_keys.items()})


@pytest.fixture(scope="module")
def live(tiny_world):
    return live_batch(tiny_world, 96)


def kt_abc() -> KeyedTensor:
    return KeyedTensor(keys=["a", "b", "c"], length_per_key=[2, 2, 4], values=torch.arange(24.0).view(2, 12)[:, :8])


def test_keyed_columns_returns_the_values_a_view_or_one_concatenation():
    kt = kt_abc()
    values = kt.values()
    assert keyed_columns(kt, ["a", "b", "c"]) is values                    # every key in order: no copy
    bc = keyed_columns(kt, ["b", "c"])
    assert bc.data_ptr() == values[:, 2:].data_ptr() and torch.equal(bc, values[:, 2:8])  # adjacent: a view
    ca = keyed_columns(kt, ["c", "a"])
    assert torch.equal(ca, torch.cat([values[:, 4:8], values[:, 0:2]], dim=1))
    assert torch.equal(keyed_columns(kt, ["a", "c"]), torch.cat([values[:, :2], values[:, 4:]], dim=1))
    with pytest.raises(KeyError):
        keyed_columns(kt, ["d"])


def test_keyed_stack_and_embeddings_match_per_feature_tensors():
    kt = KeyedTensor(keys=["a", "b", "c"], length_per_key=[3, 3, 3], values=torch.randn(4, 9))
    per = kt.to_dict()
    emb = Embeddings.keyed(kt, {"x": "a", "y": "b", "z": "c"}, {})
    assert keyed_stack(kt, ["a", "b", "c"]).data_ptr() == kt.values().data_ptr()
    for names in (["x", "y", "z"], ["y", "z"], ["z", "x"], ["y"]):
        keys = [{"x": "a", "y": "b", "z": "c"}[n] for n in names]
        assert torch.equal(emb.concat(names), torch.cat([per[k] for k in keys], dim=1))
        stacked = emb.stack(names)
        assert stacked.is_contiguous() and torch.equal(stacked, torch.stack([per[k] for k in keys], dim=1))
    assert set(emb.features) == {"x", "y", "z"} and len(emb.features) == 3
    assert torch.equal(emb.features["y"], per["b"]) and emb.features["y"] is emb.features["y"]


def _step(dmp, batch, seed: int, buffers):
    """Outputs (eval mode) and, in train mode, the loss and every dense gradient, from the same buffers (running
    statistics, step counters)."""
    with torch.no_grad():
        for k, b in dmp.named_buffers():
            b.copy_(buffers[k])
    dmp.eval()
    with torch.no_grad():
        _, out = dmp(batch)
    dmp.train()
    for p in dmp.parameters():
        p.grad = None
    torch.manual_seed(seed)  # the same dropout masks
    loss, _ = dmp(batch)
    loss.backward()
    grads = {k: p.grad.clone() for k, p in in_backward_optimizer_filter(dmp.named_parameters())
             if p.grad is not None}
    return {t: v.clone() for t, v in out.outputs.items()}, loss.detach(), grads


@pytest.mark.parametrize("name", model_names())
def test_every_model_is_bitwise_the_per_feature_model(name, live, monkeypatch):
    schema, batch = live
    init_distributed("cpu")
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, params={}), schema)
    train = TrainConfig(embedding_optimizer=EmbeddingOptimizerConfig(lr=0.0))  # tables stay as they are
    setup = assemble(model, schema, train, ShardingConfig(), CPU, batch.size, seed=0)
    setup.dmp.eval()
    with torch.no_grad():
        setup.dmp(batch)  # torchrec registers its input-dist buffers on the first call
    buffers = {k: b.clone() for k, b in setup.dmp.named_buffers()}
    fast = _step(setup.dmp, batch, 1, buffers)
    monkeypatch.setattr(SparseArch, "forward", per_feature_forward)
    reference = _step(setup.dmp, batch, 1, buffers)
    for task in schema.task_names:
        assert torch.equal(fast[0][task], reference[0][task]), (name, task)
    assert torch.equal(fast[1], reference[1]), name
    assert fast[2].keys() == reference[2].keys() and fast[2], name
    for k in fast[2]:
        assert torch.equal(fast[2][k], reference[2][k]), (name, k)
