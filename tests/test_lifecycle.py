"""The run lifecycle: checkpoints never run code, runs are never silently reused, resumed with other settings or
trained twice at once, and a run's own config evaluates it from anywhere.

Every test here failed on the code before the run-lifecycle change (issue 17).
"""

import fcntl
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from test_bad_input import GOOD_ROWS, setup
from test_reliability import _train_cmd as train_cmd

from recsys.cli import main
from recsys.train import checkpoint as ckpt

MORE_ROWS = GOOD_ROWS + [f"u{i % 7},{i % 5},x,{i % 3}.5,{i % 2},{(i % 4) * 10},s{1 + i % 2}" for i in range(60)]


def _cli(capsys, *argv):
    rc = main(list(argv))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err.strip()


def _one_line_error(rc, err, *expected):
    assert rc == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for text in expected:
        assert text in err, err


@pytest.fixture
def trained(tmp_path, capsys):
    """A tiny finished run (with a validation split, so the best checkpoint is chosen by AUC)."""
    cfg, data, run_dir = setup(tmp_path, rows=MORE_ROWS)
    text = open(cfg).read().replace("split: {valid: 0.0, test: 0.0}", "split: {valid: 0.3, test: 0.3, seed: 3}")
    open(cfg, "w").write(text.replace("epochs: 1", "epochs: 2"))
    rc, _, err = _cli(capsys, "train", "-c", cfg)
    assert rc == 0, err
    return cfg, data, run_dir


# --- checkpoints never run code ----------------------------------------------------------------------------
class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _commands(cfg, run_dir, checkpoint, out):
    return {
        "eval --checkpoint X": ["eval", "--run-dir", run_dir, "--checkpoint", checkpoint],
        "eval (best)": ["eval", "--run-dir", run_dir],
        "eval --checkpoint latest": ["eval", "--run-dir", run_dir, "--checkpoint", "latest"],
        "predict": ["predict", "--run-dir", run_dir, "--checkpoint", "latest", "--out", out],
        "train --resume": ["train", "-c", cfg, "--resume"],
    }


@pytest.mark.parametrize("planted", ["metadata", "tensor file"])
def test_a_crafted_pickle_in_a_checkpoint_never_runs(trained, tmp_path, capsys, planted):
    cfg, _, run_dir = trained
    marker = str(tmp_path / "pwned")
    latest = ckpt.latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    # an attacker who can write the folder can also rewrite its manifest: the payload must still not run
    target = os.path.join(latest, ".metadata") if planted == "metadata" else os.path.join(latest, "__0_0.distcp")
    with open(target, "wb") as f:
        pickle.dump(_Payload(marker), f)
    ckpt.write_manifest(latest)
    with open(os.path.join(latest, "trainer.json")) as f:  # best == latest, so every command loads it
        state = json.load(f)
    state["best_checkpoint"] = os.path.basename(latest)
    with open(os.path.join(latest, "trainer.json"), "w") as f:
        json.dump(state, f)
    ckpt.write_manifest(latest)
    for name, argv in _commands(cfg, run_dir, latest, str(tmp_path / "scores.parquet")).items():
        rc, _, err = _cli(capsys, *argv)
        _one_line_error(rc, err, latest)
        assert not os.path.exists(marker), f"{name} ran the payload"
        if planted == "metadata":
            assert "refusing" in err and "posix.system" in err, (name, err)
    assert not os.path.exists(tmp_path / "scores.parquet")


def test_a_tampered_file_is_refused_by_the_manifest(trained, capsys):
    _, _, run_dir = trained
    latest = ckpt.latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    with open(os.path.join(latest, "__0_0.distcp"), "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    rc, _, err = _cli(capsys, "eval", "--run-dir", run_dir, "--checkpoint", latest)
    _one_line_error(rc, err, "__0_0.distcp", "differs from the checkpoint's manifest")


def test_a_planted_file_is_refused(trained, capsys):
    _, _, run_dir = trained
    latest = ckpt.latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    open(os.path.join(latest, "evil.pkl"), "wb").write(b"x")
    rc, _, err = _cli(capsys, "eval", "--run-dir", run_dir, "--checkpoint", latest)
    _one_line_error(rc, err, "'evil.pkl' is not in the checkpoint's manifest")


def test_metadata_pointing_outside_the_folder_is_refused(trained, capsys):
    _, _, run_dir = trained
    latest = ckpt.latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    metadata = ckpt.read_metadata(latest)
    for info in metadata.storage_data.values():
        info.relative_path = "../../../etc/passwd"
    with open(os.path.join(latest, ".metadata"), "wb") as f:
        pickle.dump(metadata, f)
    ckpt.write_manifest(latest)
    rc, _, err = _cli(capsys, "eval", "--run-dir", run_dir, "--checkpoint", latest)
    _one_line_error(rc, err, "points at '../../../etc/passwd'")


def test_a_checkpoint_without_manifest_is_refused(trained, capsys):
    _, _, run_dir = trained
    latest = ckpt.latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    os.remove(os.path.join(latest, ckpt.MANIFEST))
    rc, _, err = _cli(capsys, "eval", "--run-dir", run_dir, "--checkpoint", latest)
    _one_line_error(rc, err, "no MANIFEST.json")


def test_metadata_unpickler_admits_real_metadata_only(trained, tmp_path):
    _, _, run_dir = trained
    latest = ckpt.latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    metadata = ckpt.read_metadata(latest)  # the real thing loads
    assert metadata.state_dict_metadata and all(
        isinstance(v, torch.distributed.checkpoint.metadata.TensorStorageMetadata)
        for v in metadata.state_dict_metadata.values())
    for payload in (pickle.dumps(_Payload(str(tmp_path / "m"))), pickle.dumps(print), b"garbage"):
        folder = tmp_path / f"c{len(payload)}"
        folder.mkdir()
        (folder / ".metadata").write_bytes(payload)
        with pytest.raises(ckpt.CheckpointError, match="untrusted or unreadable"):
            ckpt.read_metadata(str(folder))
    assert not os.path.exists(tmp_path / "m")


# --- no silent reuse of a run folder ------------------------------------------------------------------------
def test_train_refuses_a_folder_that_holds_a_run(trained, capsys):
    cfg, _, run_dir = trained
    before = sorted(os.listdir(os.path.join(run_dir, "checkpoints")))
    rc, _, err = _cli(capsys, "train", "-c", cfg)
    _one_line_error(rc, err, run_dir, "not empty", "--resume", "--overwrite")
    assert sorted(os.listdir(os.path.join(run_dir, "checkpoints"))) == before


def test_overwrite_starts_afresh(trained, tmp_path, capsys):
    cfg, data, run_dir = trained
    old = sorted(os.listdir(os.path.join(run_dir, "checkpoints")))
    old_vocab = pq.read_table(os.path.join(run_dir, "encoders", "vocab.user.parquet")).column("value").to_pylist()
    # new data: other users, so reused encoders would show
    with open(data, "w") as f:
        f.write("\n".join([GOOD_ROWS[0]] + [r.replace("u", "w", 1) if r.startswith("u") else r
                                            for r in MORE_ROWS[1:]]) + "\n")
    rc, _, err = _cli(capsys, "train", "-c", cfg, "--overwrite", "--set", "train.epochs=1")
    assert rc == 0, err
    new = sorted(os.listdir(os.path.join(run_dir, "checkpoints")))
    assert set(new).isdisjoint(old) or len(new) < len(old)  # old steps are gone, not kept beside the new
    state = json.load(open(os.path.join(run_dir, "checkpoints", new[-1], "trainer.json")))
    assert state["step"] == int(new[-1].split("-")[1])
    vocab = pq.read_table(os.path.join(run_dir, "encoders", "vocab.user.parquet")).column("value").to_pylist()
    assert vocab != old_vocab and any(v.startswith("w") for v in vocab)


def test_overwrite_keeps_the_old_run_when_the_new_one_is_refused(trained, capsys):
    cfg, _, run_dir = trained
    before = sorted(os.listdir(run_dir))
    rc, _, err = _cli(capsys, "train", "-c", cfg, "--overwrite", "--set", "model.params={hiden: [8]}")
    _one_line_error(rc, err, "hiden")
    assert sorted(os.listdir(run_dir)) == before


@pytest.mark.parametrize("change, key", [
    ("data.batch_size=8", "data.batch_size"),
    ("model.params={hidden: [8]}", "model.params.hidden"),
    ("train.dense_optimizer.lr=0.01", "train.dense_optimizer.lr"),
    ("train.embedding_optimizer.name=adagrad", "train.embedding_optimizer.name"),
    ("model.embedding_dim=8", "model.embedding_dim"),
])
def test_resume_refuses_another_config(trained, capsys, change, key):
    cfg, _, run_dir = trained
    before = open(os.path.join(run_dir, "config.yaml")).read()
    rc, _, err = _cli(capsys, "train", "-c", cfg, "--resume", "--set", change)
    _one_line_error(rc, err, "--resume", key)
    assert open(os.path.join(run_dir, "config.yaml")).read() == before  # not rewritten


def test_resume_refuses_other_data(trained, capsys):
    cfg, data, run_dir = trained
    with open(data, "a") as f:
        f.write("zz,1,x,1.0,1,0,s1\n")
    rc, _, err = _cli(capsys, "train", "-c", cfg, "--resume")
    _one_line_error(rc, err, "--resume", "data files")


def test_resume_may_change_the_run_length(trained, capsys):
    cfg, _, run_dir = trained
    rc, _, err = _cli(capsys, "train", "-c", cfg, "--resume", "--set", "train.epochs=3",
                      "--set", "train.early_stopping.patience=5")
    assert rc == 0, err
    metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
    assert metrics["steps"] > 0


def test_a_second_training_of_the_same_folder_fails_at_once(tmp_path, capsys):
    cfg, _, run_dir = setup(tmp_path)
    os.makedirs(run_dir)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({os.path.join(run_dir, '.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        start = time.perf_counter()
        rc, _, err = _cli(capsys, "train", "-c", cfg)
        assert time.perf_counter() - start < 10
        _one_line_error(rc, err, run_dir, "another training is using this run folder")
        assert sorted(os.listdir(run_dir)) == [".lock"]
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_is_held_during_training_and_released_after(tmp_path, capsys, monkeypatch):
    cfg, _, run_dir = setup(tmp_path)
    seen = {}
    from recsys.train.trainer import Trainer

    original = Trainer._fit

    def probe(self):
        fd = os.open(os.path.join(run_dir, ".lock"), os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            seen["held"] = False
        except OSError:
            seen["held"] = True
        finally:
            os.close(fd)
        return original(self)

    monkeypatch.setattr(Trainer, "_fit", probe)
    rc, _, err = _cli(capsys, "train", "-c", cfg)
    assert rc == 0, err
    assert seen["held"]
    fd = os.open(os.path.join(run_dir, ".lock"), os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released: this does not raise
    os.close(fd)


# --- checkpoints are named relative to the run folder --------------------------------------------------------
def test_a_moved_run_folder_evaluates_from_anywhere(trained, tmp_path, capsys, monkeypatch):
    cfg, _, run_dir = trained
    rc, _, err = _cli(capsys, "eval", "--run-dir", run_dir, "--split", "test", "--out", str(tmp_path / "a.json"))
    assert rc == 0, err
    moved = str(tmp_path / "elsewhere" / "moved-run")
    shutil.move(run_dir, moved)
    monkeypatch.chdir(tmp_path / "elsewhere")
    rc, _, err = _cli(capsys, "eval", "--run-dir", "moved-run", "--split", "test", "--out", str(tmp_path / "b.json"))
    assert rc == 0, err
    assert json.load(open(tmp_path / "a.json")) == json.load(open(tmp_path / "b.json"))
    # the saved config alone (no --run-dir) finds its run, its spec and its data from any directory
    monkeypatch.chdir("/")
    rc, _, err = _cli(capsys, "eval", "-c", os.path.join(moved, "config.yaml"), "--split", "test",
                      "--out", str(tmp_path / "c.json"))
    assert rc == 0, err
    assert json.load(open(tmp_path / "a.json")) == json.load(open(tmp_path / "c.json"))


def test_best_is_recorded_by_name_and_a_missing_best_is_an_error(trained, capsys):
    _, _, run_dir = trained
    folder = os.path.join(run_dir, "checkpoints")
    latest = ckpt.latest_checkpoint(folder)
    best = json.load(open(os.path.join(latest, "trainer.json")))["best_checkpoint"]
    assert best.startswith("step-") and os.sep not in best
    shutil.rmtree(os.path.join(folder, best))
    if best == os.path.basename(latest):
        pytest.skip("best is the newest checkpoint here")
    rc, _, err = _cli(capsys, "eval", "--run-dir", run_dir)
    _one_line_error(rc, err, best, "best checkpoint of this run is missing")


def test_eval_and_predict_use_the_run_config(tmp_path, capsys):
    cfg, _, run_dir = setup(tmp_path, rows=MORE_ROWS)
    rc, _, err = _cli(capsys, "train", "-c", cfg, "--set", "model.params={hidden: [16, 8]}")
    assert rc == 0, err
    rc, out, err = _cli(capsys, "eval", "--run-dir", run_dir, "--split", "train")
    assert rc == 0 and "ctr" in out, err
    scores = str(tmp_path / "s.parquet")
    rc, _, err = _cli(capsys, "predict", "--run-dir", run_dir, "--split", "train", "--out", scores)
    assert rc == 0, err
    assert pq.read_table(scores).num_rows == len(MORE_ROWS) - 1
    # the original file no longer describes the run: one line naming the key, not a size-mismatch traceback
    rc, _, err = _cli(capsys, "eval", "-c", cfg, "--split", "train")
    _one_line_error(rc, err, "model.params.hidden", "leave out -c")
    rc, _, err = _cli(capsys, "predict", "-c", cfg, "--split", "train", "--out", scores)
    _one_line_error(rc, err, "model.params.hidden")


def test_an_early_stopping_metric_undefined_on_every_validation_is_refused(tmp_path, capsys):
    from recsys.data.dataset import hash_uniform

    n = 80
    valid = hash_uniform(np.arange(n), 1) < 0.25  # the rows the seeded random split sends to validation
    rows = [GOOD_ROWS[0]] + [f"u{i % 9},{i % 5},x,1.0,{0 if valid[i] else i % 2},0,s1" for i in range(n)]
    cfg, _, run_dir = setup(tmp_path, rows=rows)
    text = open(cfg).read().replace("split: {valid: 0.0, test: 0.0}", "split: {valid: 0.25, test: 0.0, seed: 1}")
    open(cfg, "w").write(text)
    rc, _, err = _cli(capsys, "train", "-c", cfg)
    _one_line_error(rc, err, "train.early_stopping.metric", "'ctr/auc'", "undefined on every validation",
                    "all negative")
    assert not os.path.exists(run_dir)


def test_a_nan_validation_metric_never_becomes_the_best(tiny_config, caplog):
    from recsys.train.trainer import Trainer

    trainer = Trainer(tiny_config(extra=["train.epochs=2", "train.early_stopping.patience=5"]))
    trainer.evaluate = lambda split="test": {trainer.metric: float("nan")}  # no positives in validation
    state = trainer.state
    with caplog.at_level("WARNING", logger="recsys.train"):
        assert not trainer._validate(trainer.metric, trainer.metric_mode)
        assert not trainer._validate(trainer.metric, trainer.metric_mode)
    assert state.best_metric is None and state.best_checkpoint is None and state.bad_evals == 2
    assert sum("undefined" in r.message for r in caplog.records) == 1  # warned once
    trainer.close()


# --- interrupts --------------------------------------------------------------------------------------------
def _train_cmd(run_dir, world, extra=()):
    # a shorter run than the kill -9 test's: 2 epochs of batch 128 with a small tower
    return train_cmd(run_dir, world, ["--set", "train.epochs=2", "--set", "data.batch_size=128",
                                      "--set", "model.params={hidden: [16]}", *extra])


def test_ctrl_c_says_interrupted_and_resume_is_bitwise(tmp_path, tiny_world):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    straight, stopped = str(tmp_path / "straight"), str(tmp_path / "stopped")
    subprocess.run(_train_cmd(straight, tiny_world), check=True, env=env, capture_output=True)
    # as started from a terminal: a suite run in a background job (`make test &`) would hand on SIGINT ignored
    proc = subprocess.Popen(_train_cmd(stopped, tiny_world), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 240
    while time.time() < deadline and not ckpt.list_checkpoints(os.path.join(stopped, "checkpoints")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err, err
    resumed = subprocess.run(_train_cmd(stopped, tiny_world, ["--resume"]), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    a = json.load(open(os.path.join(straight, "metrics.json")))
    b = json.load(open(os.path.join(stopped, "metrics.json")))
    assert a["test"] == b["test"] and a["valid"] == b["valid"]
