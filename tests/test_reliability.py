"""Crash, numeric and untrusted-file safety."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp
from conftest import REPO

from recsys.errors import ConfigError, RecsysError
from recsys.models.base import DataOutline, Requirements, check_requirements, model_class
from recsys.schema import Task
from recsys.train import checkpoint as ckpt
from recsys.train.trainer import Trainer


def test_out_of_range_id_is_caught_by_the_bounds_check(tiny_config):
    trainer = Trainer(tiny_config())
    batch = next(iter(trainer.eval_loader("valid")))
    rows = trainer.schema.feature("host_id").num_embeddings
    values = batch.sparse.values().clone()
    keys = batch.sparse.keys()
    offsets = batch.sparse.offset_per_key()
    start = offsets[keys.index("host_id")]
    values[start] = rows + 1000  # past the end of the host table: must not be read from another table's memory
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    batch.sparse = KeyedJaggedTensor(keys=keys, values=values, lengths=batch.sparse.lengths(),
                                     stride=batch.sparse.stride())
    with torch.no_grad(), pytest.raises(RuntimeError, match="idx < num_rows|out of bounds|bounds"):
        trainer.dmp(batch)


def test_checkpoint_with_pickled_object_is_refused(tmp_path):
    path = str(tmp_path / "evil")
    dcp.save({"model": {"w": torch.zeros(2)}, "payload": {"note": "executes on load"}}, checkpoint_id=path)
    ckpt.write_manifest(path)  # a consistent manifest: the pickled entry itself must be refused
    open(os.path.join(path, ckpt.COMPLETE), "w").write("ok\n")
    with pytest.raises(RecsysError, match="pickled object; refusing"):
        ckpt.check_checkpoint(path)


def test_incomplete_checkpoint_is_refused(tmp_path):
    path = str(tmp_path / "step-00000003")
    dcp.save({"model": {"w": torch.zeros(2)}}, checkpoint_id=path)  # no COMPLETE marker: interrupted save
    with pytest.raises(RecsysError, match="incomplete"):
        ckpt.check_checkpoint(path)
    assert ckpt.latest_checkpoint(str(tmp_path)) is None


def test_gradient_clipping_bounds_the_dense_update(tiny_config):
    trainer = Trainer(tiny_config(extra=["train.dense_optimizer.name=sgd", "train.dense_optimizer.lr=1.0",
                                         "train.grad_clip_norm=0.001"]))
    dense = {n: p.detach().clone() for n, p in trainer.dmp.named_parameters() if "embedding_bags" not in n}
    batch = next(iter(trainer.train_loader()))
    trainer.optimizer.zero_grad()
    loss, _ = trainer.dmp(batch)
    loss.backward()
    trainer.optimizer.step()
    moved = torch.sqrt(sum(((p.detach() - dense[n]) ** 2).sum()
                           for n, p in trainer.dmp.named_parameters() if n in dense))
    assert 0 < float(moved) <= 0.001 * 1.0001  # SGD step = lr * clipped gradient


def test_model_requirements_are_checked_before_reading():
    outline = DataOutline("tiny", (Task("like"),), num_scenarios=1, user_feature=None, has_time=False)
    check_requirements("wide_deep", outline)
    cls = model_class("wide_deep")
    saved = cls.requirements
    try:
        cls.requirements = Requirements(min_tasks=2, scenario=True)
        with pytest.raises(ConfigError, match="needs at least 2 tasks, the dataset has 1 \\(like\\)"):
            check_requirements("wide_deep", outline)
        cls.requirements = Requirements(scenario=True)
        with pytest.raises(ConfigError, match="multi-scenario but the dataset declares no scenario"):
            check_requirements("wide_deep", outline)
        cls.requirements = Requirements(funnel=True)
        with pytest.raises(ConfigError, match="needs a funnel"):
            check_requirements("wide_deep", outline)
    finally:
        cls.requirements = saved


def _train_cmd(run_dir, world, extra=()):
    return [sys.executable, "-m", "recsys", "train", "-c", os.path.join(REPO, "configs", "wide_deep_synthetic.yaml"),
            "--data", world, "--run-dir", run_dir, "--set", "train.epochs=3", "--set", "data.batch_size=64",
            "--set", "train.checkpoint_every_steps=5", "--set", "train.progress=false", "--set", "tensorboard=false",
            "--set", "model.embedding_dim=8", "--set", "train.early_stopping.patience=100", *extra]


def test_kill_9_then_resume_matches_an_uninterrupted_run_bitwise(tmp_path, tiny_world):
    env = {**os.environ, "PYTHONPATH": REPO}
    straight = str(tmp_path / "straight")
    subprocess.run(_train_cmd(straight, tiny_world), check=True, env=env, capture_output=True)
    killed = str(tmp_path / "killed")
    proc = subprocess.Popen(_train_cmd(killed, tiny_world), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        done = ckpt.list_checkpoints(os.path.join(killed, "checkpoints"))
        if done and done[-1][0] >= 10:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "training finished before it could be killed; make the run longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(os.path.join(killed, "metrics.json"))
    resumed = subprocess.run(_train_cmd(killed, tiny_world, ["--resume"]), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = json.load(open(os.path.join(straight, "metrics.json")))
    b = json.load(open(os.path.join(killed, "metrics.json")))
    assert a["steps"] == b["steps"] and a["best_step"] == b["best_step"]
    for split in ("valid", "test"):
        for key, value in a[split].items():
            assert b[split][key] == value or (np.isnan(value) and np.isnan(b[split][key])), (split, key)
