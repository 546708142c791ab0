"""The calibration blocks: EmbCB, MlpCB, GateNU, EPNet, scaled_mlp (each switch changes what it documents)."""

import pytest
import torch

from recsys.modules.calibration import EmbCB, EPNet, GateNU, MlpCB, scaled_mlp
from recsys.modules.mlp import MLP

B, F, D = 32, 5, 8


def embeddings(seed=0, b=B, f=F, d=D):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, f * d, generator=g)


@pytest.mark.parametrize("design", ["shared", "senet"])
@pytest.mark.parametrize("granularity", ["field", "field_dim"])
def test_embcb_weights_vary_per_sample_and_rescale_each_field(design, granularity):
    torch.manual_seed(0)
    cb = EmbCB([D] * F, design=design, granularity=granularity)
    x = embeddings()
    w = cb.field_weights(x)
    assert w.shape == (B, F if granularity == "field" else F * D)
    assert (w.std(dim=0) > 1e-4).all()  # every weight differs across the samples of the batch
    y = cb(x)
    expected = x * (w.repeat_interleave(D, dim=1) if granularity == "field" else w)
    torch.testing.assert_close(y, expected)


def test_embcb_senet_squeeze_is_the_mean_of_each_field():
    cb = EmbCB([D] * F, design="senet")
    x = embeddings()
    torch.testing.assert_close(cb.squeeze(x), x.view(B, F, D).mean(dim=2))
    assert cb.shared_vectors is None


@pytest.mark.parametrize("k", [1, 2, 16])
def test_embcb_shared_vectors_k_sets_the_descriptor(k):
    cb = EmbCB([D] * F, num_vectors=k)
    x = embeddings()
    s = cb.squeeze(x)
    assert cb.shared_vectors.shape == (k, D)
    assert s.shape == (B, F * k)
    # the interaction is the inner product of each field embedding with each shared vector
    q = cb.shared_vectors.detach()
    torch.testing.assert_close(s.view(B, F, k), x.view(B, F, D) @ q.T)
    # the first vector starts as mean-pooling: K = 1 begins exactly as SENet's squeeze
    torch.testing.assert_close(s.view(B, F, k)[:, :, 0], x.view(B, F, D).mean(dim=2))
    assert cb.fc_hidden.in_features == F * k and cb.fc_hidden.out_features == 128


def test_embcb_interaction_activation_relu_cuts_negative_projections():
    torch.manual_seed(0)
    linear = EmbCB([D] * F, num_vectors=4, interaction_activation="linear")
    relu = EmbCB([D] * F, num_vectors=4, interaction_activation="relu")
    relu.load_state_dict(linear.state_dict())
    x = embeddings()
    s_lin, s_relu = linear.squeeze(x), relu.squeeze(x)
    assert (s_lin < 0).any()
    torch.testing.assert_close(s_relu, torch.relu(s_lin))


def test_embcb_output_activations_and_the_relu_collapse():
    x = embeddings()
    ranges = {}
    for act in ("scaled_sigmoid", "sigmoid", "relu"):
        torch.manual_seed(0)
        cb = EmbCB([D] * F, output_activation=act, gamma=2.0)
        ranges[act] = cb.field_weights(x)
        with torch.no_grad():  # an identity start: the output layer gives its bias only
            cb.fc_out.weight.zero_()
        w0 = cb.field_weights(x)
        torch.testing.assert_close(w0, torch.full_like(w0, 0.5 if act == "sigmoid" else 1.0))
    assert 0 < ranges["scaled_sigmoid"].min() and ranges["scaled_sigmoid"].max() < 2
    assert 0 < ranges["sigmoid"].min() and ranges["sigmoid"].max() < 1
    assert ranges["relu"].min() >= 0

    # the documented failure: once a ReLU output reaches zero it has no gradient and stays there
    for act, dead in (("relu", True), ("scaled_sigmoid", False)):
        torch.manual_seed(0)
        cb = EmbCB([D] * F, output_activation=act)
        with torch.no_grad():
            cb.fc_out.bias.fill_(-50.0)
        out = cb(x)
        stats = cb.tensorboard_stats()
        out.sum().backward()
        grad = cb.fc_out.weight.grad.abs().sum()
        if dead:
            assert float(stats["weight_zero_frac"]) == 1.0 and float(grad) == 0.0
        else:
            assert float(stats["weight_zero_frac"]) < 1.0 and float(grad) > 0.0


def test_embcb_unequal_field_widths_are_zero_padded():
    torch.manual_seed(0)
    dims = [4, 8, 12]
    cb = EmbCB(dims, num_vectors=3, granularity="field")
    x = torch.randn(6, sum(dims))
    parts = torch.split(x, dims, dim=1)
    q = cb.shared_vectors.detach()
    expected = torch.stack([p @ q[:, : p.shape[1]].T for p in parts], dim=1)
    torch.testing.assert_close(cb.squeeze(x).view(6, 3, 3), expected)
    w = cb.field_weights(x)
    y = cb(x)
    torch.testing.assert_close(y[:, 4:12], x[:, 4:12] * w[:, 1:2])


def test_embcb_tensorboard_stats():
    cb = EmbCB([D] * F)
    assert cb.tensorboard_stats() == {}
    cb(embeddings())
    stats = cb.tensorboard_stats()
    assert {"weight_mean", "weight_var", "weight_zero_frac", "weight_sample_std"} <= set(stats)
    assert all(stats[k].numel() == 1 for k in ("weight_mean", "weight_var", "weight_zero_frac"))
    assert stats["weights"].numel() == B * F


def test_gatenu_is_bounded_by_gamma_and_starts_at_one():
    torch.manual_seed(0)
    gate = GateNU(10, 6, hidden=16, gamma=3.0)
    x = torch.randn(40, 10) * 10
    s = gate(x)
    assert s.shape == (40, 6) and (s > 0).all() and (s < 3.0).all()
    with torch.no_grad():
        gate.out.weight.zero_()
    torch.testing.assert_close(gate(x), torch.full((40, 6), 1.5))  # gamma * sigmoid(0)


def test_mlpcb_serial_chains_the_gates_parallel_does_not():
    torch.manual_seed(0)
    serial = MlpCB(10, [16, 8, 4], hidden=12, serial=True)
    parallel = MlpCB(10, [16, 8, 4], hidden=12, serial=False)
    assert [g.hidden.in_features for g in serial.gates] == [10, 16, 8]
    assert [g.hidden.in_features for g in parallel.gates] == [10, 10, 10]
    x = torch.randn(B, 10)
    for cb, follows in ((serial, True), (parallel, False)):
        before = cb(x)
        assert [s.shape for s in before] == [(B, 16), (B, 8), (B, 4)]
        assert all((s.std(dim=0) > 1e-4).all() for s in before)  # per-sample scales
        with torch.no_grad():
            cb.gates[0].out.bias.add_(1.0)  # change only the first gate
        after = cb(x)
        assert not torch.allclose(after[0], before[0])
        assert torch.allclose(after[1], before[1]) != follows  # later gates follow it only when serial


@pytest.mark.parametrize("stop_gradient", [False, True])
def test_mlpcb_stop_gradient_detaches_only_the_main_part(stop_gradient):
    torch.manual_seed(0)
    cb = MlpCB(6 + 4, [8, 4], stop_gradient=stop_gradient)
    own = torch.randn(B, 6, requires_grad=True)
    main = torch.randn(B, 4, requires_grad=True)
    sum(s.sum() for s in cb(own, main)).backward()
    assert own.grad is not None and own.grad.abs().sum() > 0
    if stop_gradient:
        assert main.grad is None
    else:
        assert main.grad is not None and main.grad.abs().sum() > 0
    assert all(p.grad is not None for p in cb.parameters())


def test_mlpcb_tensorboard_stats_hold_one_histogram_per_layer():
    cb = MlpCB(10, [16, 8])
    cb(torch.randn(B, 10))
    stats = cb.tensorboard_stats()
    assert stats["gate0/scales"].numel() == B * 16 and stats["gate1/scales"].numel() == B * 8
    assert stats["gate0/mean"].numel() == 1


def test_scaled_mlp_multiplies_each_hidden_layer():
    torch.manual_seed(0)
    mlp = MLP(10, [16, 8], output_dim=1)
    x = torch.randn(B, 10)
    ones = [torch.ones(B, 16), torch.ones(B, 8)]
    torch.testing.assert_close(scaled_mlp(mlp, x, ones), mlp(x))
    s = [torch.rand(B, 16) * 2, torch.rand(B, 8) * 2]
    h = mlp.blocks[0](x) * s[0]
    h = mlp.blocks[1](h) * s[1]
    torch.testing.assert_close(scaled_mlp(mlp, x, s), mlp.output(h))
    # starting after a precomputed first block gives the same result
    torch.testing.assert_close(scaled_mlp(mlp, mlp.blocks[0](x) * s[0], s[1:], start=1), mlp.output(h))


@pytest.mark.parametrize("stop_gradient", [False, True])
def test_epnet_scales_fields_by_domain_and_stops_gradient(stop_gradient):
    torch.manual_seed(0)
    ep = EPNet(4, [D] * F, hidden=16, stop_gradient=stop_gradient)
    main = embeddings().requires_grad_(True)
    domain = torch.randn(B, 4)
    out = ep(domain, main)
    w = ep._last
    assert w.shape == (B, F) and (w.std(dim=0) > 1e-4).all()
    torch.testing.assert_close(out, main * w.repeat_interleave(D, dim=1))
    # a different domain with the same embeddings changes the weights
    assert not torch.allclose(ep(torch.randn(B, 4), main), out)
    out = ep(domain, main)
    upstream = torch.randn_like(out)
    out.backward(upstream)
    direct = upstream * w.repeat_interleave(D, dim=1)  # the gradient through the product only
    if stop_gradient:
        torch.testing.assert_close(main.grad, direct)
    else:
        assert not torch.allclose(main.grad, direct)
