"""The benchmark harnesses compute what they claim: the plain-PyTorch and MLP-only twins are the same function as
the sharded recsys model, the kernel bound looks up the same rows, memory and bandwidth are measured as
documented, and the throughput, quality and loader runners produce their results."""

import copy
import json
import os

import numpy as np
import pytest
import torch
from torchrec.optim.optimizers import in_backward_optimizer_filter

from benchmarks import kernels, throughput
from benchmarks.memory import PeakMemory
from benchmarks.plain import FixedSparseArch, mlp_twin, plain_twin
from benchmarks.workloads import CriteoWorkload
from recsys.config import ModelConfig
from recsys.models import build_model, model_names
from recsys.modules.sparse import SparseArch
from recsys.train.dist import init_distributed
from recsys.train.sharding import BOUNDS_CHECK

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def live(tiny_world):
    """Schema and one 64-row batch of the (tiny) live-streaming world, read through its dataset spec."""
    from recsys.data.dataset import Dataset
    from recsys.data.spec import load_spec
    from tests.conftest import REPO

    ds = Dataset(load_spec(os.path.join(REPO, "configs", "datasets", "synthetic.yaml")), root=tiny_world)
    ds.fit()
    train = ds.read(splits=("train",))["train"]
    schema = ds.schema(8)
    return schema, train.take(np.arange(64)).to_batch(schema.feature_names)


def criteo(hot: int):
    wl = CriteoWorkload(vocab_cap=300, dim=8, hot=hot)
    return wl.schema, wl.batches(64, 1, seed=1)[0]


def arch_of(model: torch.nn.Module) -> SparseArch:
    return next(m for m in model.modules() if isinstance(m, SparseArch))


def sharded_and_twins(name: str, schema, batch):
    """The recsys path (DMP) of a registry model and its plain and MLP-only twins from the same weights."""
    init_distributed("cpu")
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, params={}), schema)
    base = copy.deepcopy(model)
    settings = throughput.Settings(device=CPU, pipeline=False)
    recsys = throughput.RecsysPath(model, [batch], settings, batch.size)
    weights = throughput.table_weights(recsys.dmp)
    return recsys, base, plain_twin(base, weights), weights


def check_same_function(name: str, schema, batch) -> None:
    recsys, base, plain, _ = sharded_and_twins(name, schema, batch)
    recsys.dmp.eval()
    plain_module = throughput.EagerPath("plain", plain, [batch], CPU).module
    plain_module.eval()
    loss_r, out_r = recsys.dmp(batch)
    loss_p, out_p = plain_module(batch)
    for task in schema.task_names:
        np.testing.assert_allclose(out_p.outputs[task].numpy(), out_r.outputs[task].numpy(), rtol=1e-5, atol=1e-6,
                                   err_msg=f"{name}: {task}")
    np.testing.assert_allclose(float(loss_p), float(loss_r), rtol=1e-5)
    # the same backward into the dense layers
    loss_r.backward()
    loss_p.backward()
    dense_r = {k.split("model.", 1)[1]: p.grad for k, p in in_backward_optimizer_filter(recsys.dmp.named_parameters())
               if p.requires_grad}
    dense_p = {k.split("model.", 1)[1]: p.grad for k, p in plain_module.named_parameters()
               if "sparse_arch" not in k and p.requires_grad}
    assert dense_r.keys() == dense_p.keys() and dense_r, name
    for k in dense_r:
        if dense_r[k] is None:
            assert dense_p[k] is None or not dense_p[k].any(), (name, k)
            continue
        np.testing.assert_allclose(dense_p[k].numpy(), dense_r[k].numpy(), rtol=1e-4, atol=1e-6,
                                   err_msg=f"{name}: grad of {k}")
    # the MLP-only twin, served the real embeddings, is the same dense function
    mlp = mlp_twin(base, batch.size)
    with torch.no_grad():
        emb = arch_of(plain)(batch.sparse)
    for m in mlp.modules():
        if isinstance(m, FixedSparseArch):
            m.load(emb)
    mlp.eval()
    out_m = mlp(batch)
    for task in schema.task_names:
        np.testing.assert_allclose(out_m[task].detach().numpy(), out_r.outputs[task].numpy(), rtol=1e-5,
                                   atol=1e-6, err_msg=f"{name}: mlp twin {task}")


@pytest.mark.parametrize("name", model_names())
def test_plain_twin_is_the_sharded_model_on_the_live_world(name, live):
    """Fairness of the comparison: same weights in, same outputs, loss and dense gradients out."""
    check_same_function(name, *live)


@pytest.mark.parametrize("name,hot", [("dnn", 1), ("wide_deep", 3)])
def test_plain_twin_is_the_sharded_model_on_criteo_like(name, hot):
    check_same_function(name, *criteo(hot))


def test_tbe_bound_looks_up_and_updates_the_same_rows(live):
    schema, batch = live
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="wide_deep", params={}), schema)  # sum and mean tables, wide tables
    arch = arch_of(plain_twin(model))
    bound = kernels.TbeBound(arch_of(model), lr=0.05, eps=1e-8, bounds_check=BOUNDS_CHECK["fatal"], device=CPU)
    assert len(bound.tbes) == 2  # one kernel per pooling mode, as torchrec groups them
    tables = [list(dict.fromkeys(t for _, t, _ in slots)) for slots in bound.slots]
    with torch.no_grad():
        for tbe, names in zip(bound.tbes, tables):
            for w, t in zip(tbe.split_embedding_weights(), names):
                w.copy_(arch.tables[t].weight)
    inp = bound.prepare(batch.sparse)
    emb = arch(batch.sparse)
    for out, slots in zip(bound(inp), bound.slots):
        expected = torch.cat([(emb.wide if t.endswith("__wide") else emb.features)[f] for f, t, _ in slots], dim=1)
        np.testing.assert_allclose(out.detach().numpy(), expected.detach().numpy(), rtol=1e-5, atol=1e-6)
    before = [[w.clone() for w in tbe.split_embedding_weights()] for tbe in bound.tbes]
    bound.train_step(inp)
    jt = batch.sparse.to_dict()
    for tbe, names, old in zip(bound.tbes, tables, before):
        for t, w_old, w_new in zip(names, old, tbe.split_embedding_weights()):
            feats = [f.name for f in schema.sparse if f.table_name == t.removesuffix("__wide")]
            seen = set(torch.cat([jt[f].values() for f in feats]).tolist())
            changed = set(torch.nonzero((w_new != w_old).any(dim=1)).flatten().tolist())
            assert changed == seen, t  # the fused row-wise Adagrad touched exactly the rows looked up


def test_peak_memory_sees_an_allocation_and_resets():
    with PeakMemory(CPU) as big:
        x = torch.ones(1 << 24)  # 64 MiB
        x.add_(1.0)
        del x
    with PeakMemory(CPU) as small:
        y = torch.ones(1 << 10)
        del y
    assert big.method == "rss-hwm"
    assert big.peak_bytes >= 60 * 2**20
    assert small.peak_bytes < 16 * 2**20  # the high-water mark was reset between the blocks


def test_lookup_bytes_hand_computed():
    from recsys.schema import Schema, SparseFeature

    schema = Schema(sparse=(SparseFeature("a", 10, 8), SparseFeature("b", 10, 4, multi_hot=True)))
    model = build_model(ModelConfig(name="dnn", params={"hidden": [4]}), schema)
    from recsys.data.columns import Columns, Ragged

    n = 4
    cols = Columns(dense=np.zeros((n, 0), np.float32),
                   sparse={"a": np.arange(n), "b": Ragged(np.array([1, 2, 3, 4, 5, 6]), np.array([0, 1, 3, 3, 6]))},
                   labels={"ctr": np.zeros(n, np.float32)}, scenario=np.zeros(n, np.int64), user=np.zeros(n, np.int64),
                   weights=np.ones(n, np.float32), row_id=np.arange(n))
    bound = kernels.TbeBound(arch_of(model), 0.05, 1e-8, BOUNDS_CHECK["fatal"], CPU)
    inp = bound.prepare(cols.to_batch(["a", "b"]).sparse)
    rows = 4 * 8 * 4 + 6 * 4 * 4            # looked-up rows x width x 4 bytes
    index = (10 + 9) * 8                    # 10 indices + (2 features x 4 rows + 1) offsets, int64
    out = 4 * 12 * 4                        # pooled output [B, 8 + 4]
    assert inp.forward_bytes == rows + index + out
    assert inp.backward_bytes == out + index + 2 * rows + 2 * 10 * 4


def test_hbm_peak_by_device_name():
    assert kernels.hbm_peak("NVIDIA H100 80GB HBM3") == 3.35e12
    assert kernels.hbm_peak("NVIDIA H100 PCIe") == 2.0e12
    assert kernels.hbm_peak("NVIDIA H200") == 4.8e12
    assert kernels.hbm_peak("Some GPU") != kernels.hbm_peak("Some GPU")  # NaN: unknown


def test_bound_and_ratios_follow_the_stated_formulas():
    def stats(rounds):
        return throughput._stats(rounds)

    out = {"train": {"recsys": stats([45.0, 40.0, 44.0]), "plain": stats([10.0, 20.0, 11.0]),
                     "tbe": stats([100.0, 100.0, 100.0]), "mlp": stats([100.0, 100.0, 100.0])}}
    d = throughput.derived(out, batch_size=1, gpu_name=None)
    assert d["bound_train"]["median"] == pytest.approx(50.0)            # 1 / (1/100 + 1/100)
    assert d["ratios"]["recsys_over_plain_train"]["median"] == pytest.approx(4.0)  # paired: 4.5, 2.0, 4.0
    assert d["ratios"]["recsys_over_bound_train"]["median"] == pytest.approx(0.88)
    assert d["within_bound"]  # 1/44 = 0.0227 <= 1.15 * 0.02 = 0.023
    out["train"]["recsys"] = stats([42.0, 42.0, 42.0])
    assert not throughput.derived(out, batch_size=1, gpu_name=None)["within_bound"]  # 0.0238 > 0.023


def test_quick_run_writes_results_with_the_pipeline(tmp_path):
    """The whole harness at tiny size; the recsys path steps through TrainPipelineSparseDist (the GPU path)."""
    rc = throughput.main(["--quick", "--out", str(tmp_path), "--pipeline", "sparse_dist",
                          "--workloads", "criteo-1hot,live", "--sweep-batch-sizes", "64", "--batch-sizes", "64",
                          "--vocab-sweep", "", "--criteo-models", "dnn", "--live-models", "wide_deep"])
    assert rc == 0
    result = json.loads((tmp_path / "throughput_cpu_quick.json").read_text())
    assert result["settings"]["pipeline"] is True
    assert [(c["workload"], c["model"]) for c in result["cells"]] == [("criteo-1hot", "dnn"), ("live", "wide_deep")]
    for c in result["cells"]:
        assert "error" not in c, c.get("error")
        for phase in ("train", "infer"):
            assert set(c[phase]) == set(throughput.PATHS)
            for stats in c[phase].values():
                assert len(stats["rounds"]) == 2 and all(r > 0 and np.isfinite(r) for r in stats["rounds"])
        for path in throughput.PATHS:
            assert c["memory"][path]["peak_bytes"] is not None
        assert c["tbe_bandwidth"]["bytes_per_step"] > 0
    md = (tmp_path / "throughput_cpu_quick.md").read_text()
    assert "Headline" in md and "1/recsys <= 1.15 x (1/tbe + 1/mlp)" in md
    for png in ("batch", "ratio", "models"):
        assert (tmp_path / f"throughput_cpu_quick_{png}.png").stat().st_size > 1000
    (tmp_path / "throughput_cpu_quick.md").unlink()
    assert throughput.main(["--render", str(tmp_path / "throughput_cpu_quick.json")]) == 0
    assert (tmp_path / "throughput_cpu_quick.md").read_text() == md


def test_quality_runner_quick(capsys):
    from benchmarks import quality

    assert quality.main(["--quick", "--grid", "foundation"]) == 0
    out = capsys.readouterr().out
    for row in ("| Wide&Deep |", "| DNN |"):
        line = next(x for x in out.splitlines() if x.startswith(row))
        values = [float(v.split("±")[0]) for v in line.split("|")[2:-1] if v.strip()]
        assert values and all(np.isfinite(values)), line


def test_loader_benchmark_tiny(tmp_path):
    from benchmarks import loader

    assert loader.main(["--rows", "4000", "--batch-size", "256", "--repeats", "1", "--train-steps", "3",
                        "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "loader.json").read_text())
    assert all(r["median"] > 0 for r in result["rows_per_sec"].values())
    assert all(v > 0 for v in result["train_samples_per_sec"].values())
    assert (tmp_path / "loader.png").stat().st_size > 1000


def test_quality_runner_keeps_the_cells_it_did_not_run(tmp_path):
    from benchmarks.quality import keep_earlier_cells

    previous = tmp_path / "g.json"
    previous.write_text(json.dumps({
        "epochs": None, "environment": {"command": "python -m benchmarks.quality --datasets movielens"},
        "results": {"A": {"movielens": {"metrics": {"x": 1}}, "synthetic": {"metrics": {"x": 0}}},
                    "B": {"movielens": {"metrics": {"x": 2}, "epochs": 3, "command": "c"},
                          "synthetic": {"metrics": {"x": 5}}},
                    "gone": {"movielens": {"metrics": {"x": 7}}}}}))
    # this run redid A on synthetic only (as `--datasets synthetic --only A` would)
    results = {"A": {"synthetic": {"metrics": {"x": 9}}}}
    ran = lambda exp, dataset: dataset == "synthetic" and exp == "A"  # noqa: E731
    kept = keep_earlier_cells(str(previous), results, ran, ["B", "A"])
    # the fresh cell wins; the others come back with the command and budget that made them, in the grid's order
    assert results["A"]["synthetic"]["metrics"] == {"x": 9}
    assert results["A"]["movielens"]["metrics"] == {"x": 1}
    assert results["A"]["movielens"]["epochs"] is None
    assert results["B"]["movielens"]["command"] == "c"
    assert results["B"]["synthetic"]["metrics"] == {"x": 5}
    assert "gone" not in results and list(results) == ["B", "A"]
    assert sorted(kept) == ["movielens", "synthetic"]
    assert ("c", 3) in kept["movielens"] and len(kept["movielens"]) == 2
    assert keep_earlier_cells(str(tmp_path / "missing.json"), results, ran, ["A"]) == {}


def test_quality_runner_rejects_an_unknown_experiment(tmp_path):
    from benchmarks import quality
    from benchmarks.grids import foundation

    with pytest.raises(ValueError, match="unknown experiment"):
        quality.run_grid("foundation", foundation, ["synthetic"], 1, False, str(tmp_path), only=["No Such Row"])


def test_every_quality_grid_names_registered_models_and_known_datasets():
    from benchmarks import quality
    from recsys.models.base import model_names

    registered = set(model_names())
    available = quality.grids()
    assert {"foundation", "cbmr", "cbmr_full", "cbmr_scale", "cbmr_slopes", "cbmr_dropout", "cbmr_ctr", "cvr", "cvr_funnel", "stan", "stan_full",
            "ssim"} <= set(available)
    for name, grid in available.items():
        exps = grid.EXPERIMENTS
        assert exps, f"grid {name} has no experiments"
        labels = [e.name for e in exps]
        assert len(labels) == len(set(labels)), f"grid {name}: duplicate rows {labels}"
        for e in exps:
            assert e.model in registered, f"grid {name}, row {e.name}: unknown model {e.model}"
            assert set(e.datasets) <= set(quality.DATASETS), f"grid {name}, row {e.name}: {e.datasets}"
    # the full-budget grids repeat rows of their short-budget grids, so their names must match exactly
    assert [e.name for e in available["stan_full"].EXPERIMENTS] == [
        "PLE (STAN code, no state branch)", "STAN branch, no re-weighting", "STAN"]
    assert [e.name for e in available["cbmr_full"].EXPERIMENTS][:3] == ["Wide&Deep", "CBMR (EmbCB + MlpCB)", "MultiCBMR"]


def test_cbmr_table_renders_any_synthetic_profile_with_the_gap_in_std():
    from benchmarks.grids import cbmr

    def cell(auc, std):
        return {"metrics": {"ctr/auc": {"mean": auc, "std": std},
                            "ctr/auc/scenario=feed": {"mean": auc + 0.01, "std": std}}}

    md = cbmr.render({"Wide&Deep": {"synthetic-2m": cell(0.79, 0.004)},
                      "CBMR (EmbCB + MlpCB)": {"synthetic-2m": cell(0.80, 0.002)}})
    lines = md.splitlines()
    assert lines[0] == "### synthetic-2m"
    assert "ctr AUC feed" in lines[2]
    row = next(x for x in lines if x.startswith("| CBMR (EmbCB + MlpCB) |"))
    # (0.80 - 0.79) / max(0.004, 0.002) = 2.5 std
    assert row.endswith("| +0.0100 (+2.5) |"), row
