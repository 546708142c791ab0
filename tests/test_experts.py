import torch

from recsys.modules.experts import CGC, PLE, MMoE


def test_mmoe_gates_sum_to_one_and_vary_per_sample():
    torch.manual_seed(0)
    mmoe = MMoE(8, ["ctr", "cvr"], num_experts=3, expert_hidden=[16, 4])
    out = mmoe(torch.randn(5, 8))
    assert set(out) == {"ctr", "cvr"} and out["ctr"].shape == (5, 4)
    for g in mmoe.gate_weights().values():
        assert g.shape == (5, 3)
        torch.testing.assert_close(g.sum(dim=1), torch.ones(5))
        assert (g.std(dim=0) > 0).any()
    assert not torch.equal(mmoe.gate_weights()["ctr"], mmoe.gate_weights()["cvr"])


def test_ple_one_level_no_shared_is_per_task_towers():
    torch.manual_seed(0)
    ple = PLE(8, ["a", "b"], levels=1, specific_experts=1, shared_experts=0, expert_hidden=[6, 3])
    x = torch.randn(4, 8)
    out = ple(x)
    layer = ple.levels[0]
    for t in ("a", "b"):
        tower = layer.specific[t].experts[0]
        torch.testing.assert_close(out[t], tower(x))  # a single-expert softmax gate weighs it by exactly 1
    out["a"].sum().backward()
    assert all(p.grad is None for p in layer.specific["b"].parameters())  # towers are independent


def test_ple_two_levels_shapes_and_shared_path():
    torch.manual_seed(0)
    ple = PLE(8, ["a", "b", "c"], levels=2, specific_experts=2, shared_experts=1, expert_hidden=[5])
    out = ple(torch.randn(7, 8))
    assert set(out) == {"a", "b", "c"} and all(v.shape == (7, 5) for v in out.values())
    assert ple.levels[0].shared_gate is not None and ple.levels[1].shared_gate is None
    cgc = CGC({"a": 8, "shared": 8}, ["a"], specific_experts=2, shared_experts=2, expert_hidden=[4])
    res = cgc({"a": torch.randn(3, 8), "shared": torch.randn(3, 8)})
    assert res["a"].shape == (3, 4) and "shared" not in res
