import torch
from funnel_util import FUNNEL, funnel_batch, make_model, touched


def test_ple_one_level_without_shared_experts_is_per_task_towers():
    model = make_model("ple", {"levels": 1, "specific_experts": 1, "shared_experts": 0,
                               "expert_hidden": [12, 6], "tower": [4]})
    model.eval()
    batch = funnel_batch(10, seed=1)
    out = model(batch)
    x = torch.cat([model.sparse_arch(batch.sparse).concat(model.sparse_arch.features), batch.dense], dim=1)
    cgc = model.ple.levels[0]
    for t in FUNNEL.task_names:
        own = cgc.specific[t].experts[0](x)   # the task's single expert, weighed 1 by its one-way softmax gate
        torch.testing.assert_close(out[t], model.towers.towers[t](own).squeeze(-1))
    model.train()
    model(batch)["cvr"].sum().backward()
    assert touched(cgc.specific["cvr"])
    assert not touched(cgc.specific["ctr"]) and not touched(cgc.specific["stay"])  # nothing shared but embeddings


def test_ple_two_levels_share_through_shared_experts():
    model = make_model("ple", {"levels": 2, "specific_experts": 2, "shared_experts": 1,
                               "expert_hidden": [8], "tower": [4]})
    out = model(funnel_batch(32, seed=2))
    assert list(out) == FUNNEL.task_names and all(v.shape == (32,) for v in out.values())
    out["cvr"].sum().backward()
    low, top = model.ple.levels
    assert touched(low.shared) and touched(low.shared_gate) and touched(top.shared)
    # level 1's ctr experts feed the shared gate, hence level 2's shared expert and the cvr output
    assert touched(low.specific["ctr"])
    assert not touched(top.specific["ctr"]) and not touched(top.gates["ctr"])
    for g in top._last_gates.values():
        torch.testing.assert_close(g.sum(dim=1), torch.ones(32))
