"""``recsys export`` for every registered model: the artifact scores raw rows in a process without recsys.

One module-scoped fixture trains every registered model for two steps on a 7-feature cut of the tiny synthetic
world, scores its test split with ``recsys predict`` and exports it with ``recsys export``; one subprocess, in
which ``recsys`` and ``torchrec`` cannot be imported, opens every artifact with its own ``runtime.py``,
preprocesses the raw test rows (the Parquet columns as written by the generator) and scores them. The tests
then require those scores to equal ``recsys predict``'s within 1e-5.
"""

import json
import os
import shutil
import subprocess
import sys
from typing import Dict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from conftest import REPO

from recsys.cli import main
from recsys.config import load_config
from recsys.models import model_names
from recsys.serving import load_for_inference, runtime
from recsys.serving.export import export_run
from recsys.train.metrics import auc
from recsys.train.trainer import Trainer

PARITY_ATOL = 1e-5
SPEC = {
    "name": "synthetic-serving",
    "source": {"path": ".", "format": "parquet"},
    "sparse": [
        {"name": "user_id", "group": "user"},
        {"name": "gender", "group": "user"},
        {"name": "user_interests", "group": "user", "multi_hot": True, "pooling": "mean"},
        {"name": "host_id", "group": "host"},
        {"name": "item_id", "group": "item"},
        {"name": "position", "group": "context"},
        {"name": "scene_id", "column": "scene", "group": "scenario"},
    ],
    "dense": [{"name": "tenure_days", "transform": "log1p_standardize"},
              {"name": "item_price", "transform": "log1p_standardize"}],
    "tasks": [
        {"name": "ctr", "column": "click", "kind": "binary"},
        {"name": "stay", "column": "stay_time", "kind": "regression", "depends_on": "ctr", "loss": "log_mse",
         "weight": 0.2, "eval_threshold": 60, "min_value": 0},
        {"name": "cvr", "column": "order", "kind": "binary", "depends_on": "ctr"},
    ],
    "scenario": {"column": "scene", "num": 4, "names": ["feed", "follow", "nearby", "search"]},
    "user": "user_id", "time": "ts", "row_id": "row_id", "oracle": {"ctr": "p_click", "cvr": "p_order"},
    "eval_groups": {"stage": {"column": "stage", "num": 4, "names": ["new", "wandering", "sticky", "loyal"]}},
    "history": {},
}

# run in a fresh interpreter: recsys and torchrec cannot be imported, the artifact's own runtime.py is used
SCORER = r'''
import importlib.abc, importlib.util, json, os, sys

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("recsys", "torchrec"):
            raise ModuleNotFoundError(f"{name} is not available in this process")
        return None

sys.meta_path.insert(0, Refuse())
try:
    import recsys  # noqa: F401
    raise SystemExit("recsys was importable")
except ModuleNotFoundError:
    pass
import pyarrow.parquet as pq

jobs = json.loads(sys.argv[1])
rows = pq.read_table(jobs["rows"])
for i, (artifact, out) in enumerate(jobs["artifacts"]):
    spec = importlib.util.spec_from_file_location(f"runtime_{i}", os.path.join(artifact, "runtime.py"))
    runtime = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runtime)
    art = runtime.Artifact.open(artifact)
    scores = art.score(rows, batch_size=jobs["batch_size"])
    pq.write_table(runtime.pa.table({k.replace("/", "_"): v for k, v in scores.items()}), out)
print(json.dumps({"recsys": "recsys" in sys.modules,
                  "torchrec": any(m.split(".")[0] == "torchrec" for m in sys.modules),
                  "fbgemm_gpu": "fbgemm_gpu" in sys.modules}))
'''


def clean_env() -> Dict[str, str]:
    """The environment without this checkout on the path (PYTHONPATH), single-threaded."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", PYTHONNOUSERSITE="1")
    return env


def score_without_recsys(tmp, rows: str, artifacts, batch_size: int = 97) -> Dict[str, bool]:
    """Score ``rows`` with each ``(artifact, out)`` in one subprocess that cannot import recsys or torchrec."""
    script = os.path.join(tmp, "score.py")
    with open(script, "w") as f:
        f.write(SCORER)
    jobs = json.dumps({"rows": rows, "artifacts": artifacts, "batch_size": batch_size})
    proc = subprocess.run([sys.executable, script, jobs], cwd=tmp, env=clean_env(), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def serving_config(run_dir: str, spec: str, data: str, model: str, extra=()):
    return load_config(os.path.join(REPO, "configs/wide_deep_synthetic.yaml"), [
        f"data.spec={spec}", f"data.path={data}", f"run_dir={run_dir}", f"model.name={model}", "model.params={}",
        "data.batch_size=256", "train.epochs=1", "train.progress=false", "tensorboard=false",
        "model.embedding_dim=8", "train.pipeline=plain", *extra])


@pytest.fixture(scope="module")
def serving_spec(tmp_path_factory, tiny_world) -> str:
    path = tmp_path_factory.mktemp("spec") / "serving.yaml"
    path.write_text(yaml.safe_dump(dict(SPEC, root=tiny_world), sort_keys=False))
    return str(path)


def raw_rows(tiny_world: str, row_ids: np.ndarray, out: str) -> str:
    """The generator's rows with these row ids, in this order, as one Parquet file."""
    files = sorted(os.path.join(tiny_world, f) for f in os.listdir(tiny_world) if f.endswith(".parquet"))
    table = pa.concat_tables([pq.read_table(f) for f in files])
    position = {int(r): i for i, r in enumerate(table.column("row_id").to_numpy())}
    pq.write_table(table.take(pa.array([position[int(r)] for r in row_ids])), out)
    return out


def train_predict_export(tmp, spec: str, data: str, model: str, extra=(), quantize: str = "none") -> Dict[str, str]:
    """Train ``model``, write ``recsys predict`` scores of the test split and ``recsys export`` an artifact."""
    run = os.path.join(tmp, f"run-{model}")
    Trainer(serving_config(run, spec, data, model, extra)).fit()
    scores = os.path.join(tmp, f"predict-{model}.parquet")
    assert main(["predict", "--run-dir", run, "--split", "test", "--out", scores]) == 0
    artifact = os.path.join(tmp, f"artifact-{model}")
    assert main(["export", "--run-dir", run, "--out", artifact, "--quantize", quantize]) == 0
    return {"run": run, "predict": scores, "artifact": artifact}


@pytest.fixture(scope="module")
def every_model(tmp_path_factory, serving_spec, tiny_world):
    """Every registered model trained, predicted, exported, then scored by its artifact without recsys."""
    tmp = str(tmp_path_factory.mktemp("serving"))
    runs = {name: train_predict_export(tmp, serving_spec, tiny_world, name, ["train.max_steps=2"])
            for name in model_names()}
    row_ids = pq.read_table(runs["wide_deep"]["predict"]).column("row_id").to_numpy()
    rows = raw_rows(tiny_world, row_ids, os.path.join(tmp, "rows.parquet"))
    for name, run in runs.items():
        run["scores"] = os.path.join(tmp, f"artifact-scores-{name}.parquet")
    modules = score_without_recsys(tmp, rows, [(r["artifact"], r["scores"]) for r in runs.values()])
    return runs, row_ids, modules, rows


def test_the_scoring_process_imported_neither_recsys_nor_torchrec(every_model):
    _, _, modules, _ = every_model
    assert modules == {"recsys": False, "torchrec": False, "fbgemm_gpu": True}


@pytest.mark.parametrize("name", model_names())
def test_exported_program_scores_raw_rows_as_recsys_predict_does(every_model, name):
    runs, row_ids, _, _ = every_model
    run = runs[name]
    predicted = pq.read_table(run["predict"])
    assert np.array_equal(predicted.column("row_id").to_numpy(), row_ids)  # every model scored the same rows
    served = pq.read_table(run["scores"])
    manifest = json.load(open(os.path.join(run["artifact"], "MANIFEST.json")))
    tasks = [t["name"] for t in manifest["tasks"]]
    assert tasks == ["ctr", "stay", "cvr"] and manifest["model"]["name"] == name
    assert manifest["program"]["format"] == "torchscript" and manifest["program"]["quantize"] == "none"
    for task in tasks:
        expected = predicted.column(f"score_{task}").to_numpy()
        got = served.column(task).to_numpy()
        assert got.dtype == np.float32 and len(got) == len(expected) > 100
        np.testing.assert_allclose(got, expected, rtol=0, atol=PARITY_ATOL, err_msg=f"{name}/{task}")
        if task != "stay":  # two steps leave some models' log-space stay output below 0, which clamps to 0
            assert np.ptp(got) > 1e-4, f"{name}/{task}: constant scores prove nothing"
    ctr = served.column("ctr").to_numpy()
    assert ((ctr > 0) & (ctr < 1)).all()
    assert (served.column("stay").to_numpy() >= 0).all()  # expm1 of the log1p-space output, clamped at 0


def test_stan_exports_its_user_tracker_and_serves_each_users_state(every_model):
    runs, _, _, _ = every_model
    run = runs["stan"]
    model = load_for_inference(run["run"])
    state = model.tracker.state  # [users, tasks, (alpha, beta, count)]
    assert (state[:, :, 2] > 0).any(), "two training steps must have moved the tracker"
    users = pq.read_table(run["predict"]).column("user").to_numpy()
    served = pq.read_table(run["scores"])
    mean = (state[:, :, 0] / (state[:, :, 0] + state[:, :, 1])).numpy()
    for i, task in enumerate(model.tasks):
        np.testing.assert_allclose(served.column(f"user_state_{task}").to_numpy(), mean[users, i], rtol=0, atol=1e-6)
    outputs = json.load(open(os.path.join(run["artifact"], "MANIFEST.json")))["program"]["outputs"]
    assert outputs == ["ctr", "stay", "cvr", "user_state/ctr", "user_state/stay", "user_state/cvr"]


def test_load_for_inference_gives_an_unsharded_eval_model_with_the_trained_tables(every_model):
    runs, _, _, _ = every_model
    run = runs["wide_deep"]["run"]
    model = load_for_inference(run, checkpoint="latest")
    assert not model.training
    assert all(t.device.type == "cpu" and not t.is_meta and type(t) is torch.Tensor
               for t in model.state_dict().values())
    trained = Trainer(load_config(os.path.join(run, "config.yaml")), fit_data=False)  # DMP, as recsys eval does
    trained.load(os.path.join(run, "checkpoints", sorted(os.listdir(os.path.join(run, "checkpoints")))[-1]),
                 restore_loop=False, model_only=True)
    sharded = trained.dmp.state_dict()
    for key, value in model.state_dict().items():
        live = sharded[f"model.{key}"]
        live = live.local_shards()[0].tensor if hasattr(live, "local_shards") else live
        assert torch.equal(value, live), key


def test_manifest_lists_every_file_with_its_checksum_and_the_versions(every_model):
    runs, _, _, _ = every_model
    folder = runs["dnn"]["artifact"]
    manifest = runtime.verify(folder)
    assert set(manifest["files"]) == set(runtime.artifact_files(folder))
    assert {"model.pt", "features.json", "runtime.py", "encoders/encoders.json",
            "encoders/vocab.user_id.parquet"} <= set(manifest["files"])
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == runtime.file_digest(os.path.join(folder, name))
    assert set(manifest["versions"]) >= {"recsys", "torch", "torchrec", "fbgemm_gpu", "python"}
    assert manifest["features"] == [s["name"] for s in SPEC["sparse"]]
    assert manifest["schema"]["num_scenarios"] == 4 and manifest["schema"]["user_feature"] == "user_id"
    # the encoders are the run's own files, byte for byte
    run_encoders = os.path.join(runs["dnn"]["run"], "encoders")
    for name in os.listdir(run_encoders):
        assert runtime.file_digest(os.path.join(run_encoders, name)) == manifest["files"][f"encoders/{name}"]["sha256"]


@pytest.fixture(scope="module")
def trained_wide_deep(tmp_path_factory, serving_spec, tiny_world):
    """Wide & Deep trained for up to 4 epochs (test CTR AUC about 0.64), exported as fp32, fp16 and int8."""
    tmp = str(tmp_path_factory.mktemp("quantized"))
    run = train_predict_export(tmp, serving_spec, tiny_world, "wide_deep",
                               ["model.embedding_dim=16", "train.epochs=4", "data.batch_size=128"])
    for how in ("fp16", "int8"):
        export_run(run["run"], os.path.join(tmp, f"artifact-{how}"), quantize=how)
        run[how] = os.path.join(tmp, f"artifact-{how}")
    predicted = pq.read_table(run["predict"])
    rows = pq.read_table(raw_rows(tiny_world, predicted.column("row_id").to_numpy(), os.path.join(tmp, "rows.pq")))
    return run, predicted, rows


def test_int8_and_fp16_embeddings_keep_auc_within_0_002_of_fp32(trained_wide_deep):
    """On the tiny world's test split (583 rows): int8/fp16 embedding tables (torchrec's quantized EBC) move the
    CTR AUC by at most 0.002 from the fp32 artifact's, which equals recsys predict's."""
    run, predicted, rows = trained_wide_deep
    labels = rows.column("click").to_numpy()
    fp32 = runtime.Artifact.open(run["artifact"]).score(rows)["ctr"]
    base = auc(fp32, labels)
    assert base == pytest.approx(auc(predicted.column("score_ctr").to_numpy(), labels), abs=1e-9)
    assert base > 0.6
    for how in ("fp16", "int8"):
        artifact = runtime.Artifact.open(run[how])
        assert artifact.manifest["program"]["quantize"] == how
        scores = artifact.score(rows)["ctr"]
        assert 0 < np.abs(scores - fp32).max() < 0.02, how  # quantized, yet close
        assert abs(auc(scores, labels) - base) <= 0.002, how


def test_int8_program_holds_each_table_row_in_its_width_plus_4_bytes(trained_wide_deep):
    """Both programs keep their tables in FBGEMM's inference kernel: fp32 rows take 4 bytes a column, int8 rows
    one byte a column plus an fp16 scale and bias, unpadded: 16-wide rows 20 bytes instead of 64, the 4-wide
    wide-part rows 8 instead of 16 (0.35x). FBGEMM starts each table on a 64-byte boundary and pads each kernel's
    buffer by at most 64 bytes."""
    run, _, _ = trained_wide_deep
    schema = load_for_inference(run["run"]).schema
    widths = [16, 4]  # each feature's table, and its wide (first-order) table
    tables = len(schema.sparse) * len(widths)
    packed = {}
    for key, row_bytes in (("artifact", lambda w: 4 * w), ("int8", lambda w: w + 4)):
        program = torch.jit.load(os.path.join(run[key], "model.pt"))
        buffers = [b for n, b in program.named_buffers() if n.endswith("weights_host")]
        assert buffers and all(b.dtype == torch.uint8 for b in buffers)
        assert not any("embedding_bags" in n for n, _ in program.named_parameters())
        packed[key] = sum(f.num_embeddings * row_bytes(w) for f in schema.sparse for w in widths)
        assert packed[key] <= sum(b.numel() for b in buffers) <= packed[key] + 64 * (tables + len(buffers)), key
    assert packed["int8"] / packed["artifact"] == pytest.approx(0.35)  # at real table sizes the padding vanishes


ONE_LINE_CASES = {
    "flipped byte in the program": ("model.pt", "flip", "content differs from the artifact's manifest"),
    "truncated vocabulary": ("encoders/vocab.item_id.parquet", "truncate", "bytes, the manifest says"),
    "deleted encoder state": ("encoders/encoders.json", "delete", "missing (listed in the artifact's manifest)"),
    "planted file": ("encoders/evil.py", "plant", "not in the artifact's manifest"),
    "corrupt manifest": ("MANIFEST.json", "truncate", "unreadable artifact manifest"),
    "a checkpoint folder": (None, "checkpoint", "format 'recsys-checkpoint-v1', expected 'recsys-serving-v1'"),
    "no manifest": ("MANIFEST.json", "delete", "not a recsys serving artifact"),
    "forged program with a matching manifest": ("model.pt", "forge", "cannot load the TorchScript program"),
}


def damage(folder: str, target, how: str, run_dir: str) -> str:
    """A damaged copy of artifact ``folder`` (or a foreign folder)."""
    if how == "checkpoint":
        return os.path.join(run_dir, "checkpoints", sorted(os.listdir(os.path.join(run_dir, "checkpoints")))[-1])
    path = os.path.join(folder, target)
    if how == "flip":
        data = bytearray(open(path, "rb").read())
        data[len(data) // 2] ^= 0xFF
        open(path, "wb").write(bytes(data))
    elif how == "truncate":
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
    elif how == "delete":
        os.remove(path)
    elif how == "plant":
        open(path, "w").write("import os\n")
    elif how == "forge":  # a program that is no TorchScript archive, with the manifest rewritten to match it
        open(path, "wb").write(b"PK\x03\x04 not a program")
        manifest = json.load(open(os.path.join(folder, "MANIFEST.json")))
        manifest["files"][target] = {"size": os.path.getsize(path), "sha256": runtime.file_digest(path)}
        json.dump(manifest, open(os.path.join(folder, "MANIFEST.json"), "w"))
    return folder


@pytest.mark.parametrize("case", list(ONE_LINE_CASES))
def test_a_corrupt_or_foreign_artifact_is_refused_with_one_line(every_model, tmp_path, case):
    runs, _, _, _ = every_model
    target, how, message = ONE_LINE_CASES[case]
    copy = str(tmp_path / "artifact")
    shutil.copytree(runs["dnn"]["artifact"], copy)
    folder = damage(copy, target, how, runs["dnn"]["run"])
    runtime_py = os.path.join(runs["dnn"]["artifact"], "runtime.py")  # an intact runtime checks the damaged folder
    proc = subprocess.run([sys.executable, runtime_py, "check", folder], env=clean_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_runtime_score_command_writes_scores_and_refuses_bad_input_with_one_line(every_model, tmp_path):
    runs, row_ids, _, rows_file = every_model
    run = runs["wide_deep"]
    rows = pq.read_table(rows_file)
    runtime_py = os.path.join(run["artifact"], "runtime.py")
    out = str(tmp_path / "scores.parquet")
    good = str(tmp_path / "rows.parquet")
    pq.write_table(rows, good)
    proc = subprocess.run([sys.executable, runtime_py, "score", run["artifact"], "--input", good, "--out", out,
                           "--keep-columns", "row_id,user_id"], env=clean_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    scores = pq.read_table(out)
    assert scores.column_names == ["row_id", "user_id", "score_ctr", "score_stay", "score_cvr"]
    assert np.array_equal(scores.column("row_id").to_numpy(), row_ids)
    np.testing.assert_allclose(scores.column("score_ctr").to_numpy(),
                               pq.read_table(run["predict"]).column("score_ctr").to_numpy(), rtol=0, atol=PARITY_ATOL)
    text = pc.cast(rows.column("tenure_days"), pa.string()).to_pylist()
    text[5] = "twelve"
    bad = rows.set_column(rows.column_names.index("tenure_days"), "tenure_days", pa.array(text))
    pq.write_table(bad, str(tmp_path / "bad.parquet"))
    proc = subprocess.run([sys.executable, runtime_py, "score", run["artifact"], "--input",
                           str(tmp_path / "bad.parquet"), "--out", str(tmp_path / "never.parquet")],
                          env=clean_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"error: {tmp_path / 'bad.parquet'}, column 'tenure_days', row 6: expected a "
                                   "number, got 'twelve'")
    assert not os.path.exists(tmp_path / "never.parquet")


def test_export_refusals_are_one_line_and_leave_nothing(every_model, tmp_path, capsys):
    runs, _, _, _ = every_model
    run = runs["wide_deep"]["run"]
    out = str(tmp_path / "art")
    cases = [
        (["--quantize", "int8", "--format", "aoti"], "fbgemm::AtomicCounter"),
        (["--checkpoint", str(tmp_path / "nowhere")], "no such checkpoint folder"),
    ]
    for extra, message in cases:
        assert main(["export", "--run-dir", run, "--out", out, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
        assert os.listdir(tmp_path) == []
    os.makedirs(out)
    open(os.path.join(out, "notes.txt"), "w").write("mine\n")
    for extra, message in [([], "folder is not empty"), (["--overwrite"], "replaces only an artifact folder")]:
        assert main(["export", "--run-dir", run, "--out", out, *extra]) == 2
        assert message in capsys.readouterr().err
        assert os.listdir(out) == ["notes.txt"]
    assert main(["export", "--run-dir", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "no such file (is" in capsys.readouterr().err


def test_auto_format_writes_torchscript_for_int8_and_says_why(every_model, tmp_path, capsys):
    runs, _, _, _ = every_model
    out = str(tmp_path / "auto")
    assert main(["export", "--run-dir", runs["dnn"]["run"], "--out", out, "--quantize", "int8",
                 "--format", "auto"]) == 0
    printed = capsys.readouterr().out
    program = runtime.verify(out)["program"]
    assert program["format"] == "torchscript" and program["quantize"] == "int8"
    assert "AOTInductor is not available for int8 embeddings" in program["why"] and program["why"] in printed


@pytest.mark.slow
def test_aoti_program_scores_like_recsys_predict(every_model, tmp_path, tiny_world):
    """--format aoti (about a minute of compilation on 2 cores): the AOTInductor package also loads without recsys
    and matches recsys predict."""
    runs, row_ids, _, _ = every_model
    run = runs["wide_deep"]
    out = str(tmp_path / "aoti")
    assert main(["export", "--run-dir", run["run"], "--out", out, "--format", "aoti"]) == 0
    assert runtime.verify(out)["program"]["format"] == "aoti"
    rows = raw_rows(tiny_world, row_ids, str(tmp_path / "rows.parquet"))
    scores = str(tmp_path / "scores.parquet")
    assert score_without_recsys(str(tmp_path), rows, [(out, scores)])["recsys"] is False
    served, predicted = pq.read_table(scores), pq.read_table(run["predict"])
    for task in ("ctr", "stay", "cvr"):
        np.testing.assert_allclose(served.column(task).to_numpy(), predicted.column(f"score_{task}").to_numpy(),
                                   rtol=0, atol=PARITY_ATOL)


def test_a_two_rank_sharded_checkpoint_exports_to_the_scores_of_one_rank_predict(tmp_path, serving_spec, tiny_world):
    """Trained on 2 processes (user_id and item_id column-wise over both ranks, the rest table-wise), exported
    on one: the artifact scores as ``recsys predict`` on one rank does."""
    run = str(tmp_path / "run")
    args = ["train", "-c", "configs/wide_deep_synthetic.yaml", "--data", tiny_world, "--run-dir", run]
    for item in [f"data.spec={serving_spec}", "model.params={}", "data.batch_size=128", "train.max_steps=3",
                 "train.epochs=1", "train.progress=false", "tensorboard=false", "model.embedding_dim=16",
                 "sharding.sharding_types=[table_wise]",
                 "sharding.tables={user_id: {sharding_types: [column_wise], min_partition: 8}, "
                 "item_id: {sharding_types: [column_wise], min_partition: 8}}"]:
        args += ["--set", item]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "recsys", *args]
    proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    checkpoint = os.path.join(run, "checkpoints", sorted(os.listdir(os.path.join(run, "checkpoints")))[-1])
    assert {"__0_0.distcp", "__1_0.distcp"} <= set(os.listdir(checkpoint))
    assert "column_wise" in open(os.path.join(run, "plan.txt")).read()
    predicted = str(tmp_path / "predict.parquet")
    assert main(["predict", "--run-dir", run, "--split", "test", "--out", predicted]) == 0
    artifact = str(tmp_path / "artifact")
    assert main(["export", "--run-dir", run, "--out", artifact]) == 0
    table = pq.read_table(predicted)
    rows = pq.read_table(raw_rows(tiny_world, table.column("row_id").to_numpy(), str(tmp_path / "rows.parquet")))
    served = runtime.Artifact.open(artifact).score(rows)
    for task in ("ctr", "stay", "cvr"):
        np.testing.assert_allclose(served[task], table.column(f"score_{task}").to_numpy(), rtol=0, atol=PARITY_ATOL)


def test_readme_serving_commands_parse_with_the_real_command_lines():
    """The README's Serving commands use options that exist (recsys's parser and the artifact runtime's)."""
    import shlex

    from recsys.cli import build_parser

    text = open(os.path.join(REPO, "README.md")).read().split("## Serving", 1)[1].split("\n## ", 1)[0]
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [shlex.split(line.split("#", 1)[0]) for line in block.splitlines() if line.strip()]
    seen = set()
    for words in commands:
        if words[0].endswith("recsys"):
            args = build_parser().parse_args(words[1:])
            seen.add(args.command)
        else:
            assert words[0] == "python" and words[1].endswith("runtime.py"), words
            seen.add(runtime.build_parser().parse_args(words[2:]).command)
    assert {"train", "export", "score"} <= seen
