"""Multi-process training under DistributedModelParallel (gloo, 2 CPU processes launched by torchrun).

The 2-rank job must take the same steps as a 1-rank run on the same global batches:

* both start from the same weights: dense layers from the seed, embedding tables from (seed, table, row block)
  whatever the plan (``recsys.train.sharding.init_embeddings``);
* step t of the 1-rank run (batch 2B) sees the union of the two ranks' batches t (batch B each);
* each rank's loss is its share of the global batch's mean (``recsys.train.losses.cross_rank_mean``), DDP
  averages dense gradients and torchrec divides the pooled-embedding gradients by the world size, so the
  gradients, the fused row-wise Adagrad updates and the Adam steps are those of the 1-rank run.

What is left is float32 summation order (two halves all-reduced vs one batch): measured, the curves agree to
2e-7 (relative) over 12 steps and the validation AUCs are equal. The tolerance, rtol 1e-5, is 50 times that
and far below what a real mismatch gives: normalising each rank's conditional (CVR, stay) losses by its own
row count moves the total loss by 2e-2, doubling the embedding learning rate (what a missing gradient
division would do) by 0.9 within two steps.
"""

import json
import os
import subprocess
import sys
from typing import Dict, List, Sequence

import numpy as np
import pytest

from recsys.cli import main
from recsys.data.batch import Batch
from recsys.data.columns import Columns
from recsys.data.loader import BatchLoader
from recsys.models import model_names
from recsys.train.trainer import Trainer

from conftest import REPO, make_config

RANK_BATCH = 128
STEPS = 12
# Most tables table-wise; user, item and host ids column-wise (16 wide: 2 shards of 8 columns); city
# table-column-wise, hour data-parallel (a replica per rank, gradients averaged by DDP).
SHARDING = [
    "model.embedding_dim=16",
    "sharding.sharding_types=[table_wise]",
    "sharding.tables={user_id: {sharding_types: [column_wise], min_partition: 8}, "
    "item_id: {sharding_types: [column_wise], min_partition: 8}, "
    "host_id: {sharding_types: [column_wise], min_partition: 8}, "
    "city: {sharding_types: [table_column_wise], min_partition: 8}, hour: {sharding_types: [data_parallel]}}",
]
COMMON = SHARDING + [
    f"train.max_steps={STEPS}", "train.log_every_steps=1", "tensorboard=true", "train.pipeline=plain",
    "train.epochs=1", "train.progress=false", "model.params={}",
]
MODELS = [
    "wide_deep",
    pytest.param("cbmr", marks=pytest.mark.skipif("cbmr" not in model_names(), reason="cbmr is not registered")),
]


def torchrun(args: Sequence[str], nproc: int, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m recsys ARGS`` in ``nproc`` processes under torchrun (rendezvous on a free port)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "recsys", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def scalars(run_dir: str, tag: str) -> Dict[int, float]:
    """TensorBoard scalar ``tag`` of a run as {step: value}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(os.path.join(run_dir, "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars(tag)}


class UnionOfRanks:
    """The global batches of a job with one loader per rank: batch t is every rank's batch t, concatenated."""

    def __init__(self, loaders: List[BatchLoader], feature_names: Sequence[str]) -> None:
        self.loaders = loaders
        self.feature_names = list(feature_names)
        self.num_batches = loaders[0].num_batches

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        for loader in self.loaders:
            loader.set_epoch(epoch, start_batch)

    def __len__(self) -> int:
        return len(self.loaders[0])

    def __iter__(self):
        parts = [loader._index_batches() for loader in self.loaders]
        for _ in range(len(self)):
            yield Columns.concat([next(p) for p in parts]).to_batch(self.feature_names)


@pytest.fixture(scope="module", params=MODELS)
def two_rank_job(request, tmp_path_factory, tiny_world):
    """A 2-process gloo job (table-wise, column-wise, table-column-wise and data-parallel tables) trained for
    STEPS steps; returns (model name, run folder)."""
    name = request.param
    run_dir = str(tmp_path_factory.mktemp(f"two-{name}") / "run")
    args = ["train", "-c", "configs/wide_deep_synthetic.yaml", "--data", tiny_world, "--run-dir", run_dir,
            "--set", f"model.name={name}", "--set", f"data.batch_size={RANK_BATCH}"]
    for item in COMMON:
        args += ["--set", item]
    torchrun(args, nproc=2)
    return name, run_dir


def test_two_rank_job_writes_plan_and_sharded_checkpoint(two_rank_job):
    _, run_dir = two_rank_job
    plan = open(os.path.join(run_dir, "plan.txt")).read()
    assert "sharding plan: 2 cpu rank(s)" in plan
    for table, kind in [("user_id", "column_wise"), ("city", "table_column_wise"), ("hour", "data_parallel"),
                        ("gender", "table_wise")]:
        assert f"| {table} | " in plan and any(
            line.startswith(f"| {table} | ") and f"| {kind} |" in line for line in plan.splitlines()), table
    assert any(line.startswith("| user_id | ") and "| column_wise | fused | 2 |" in line for line in plan.splitlines())
    ckpts = [d for d in os.listdir(os.path.join(run_dir, "checkpoints")) if d.startswith("step-")]
    assert ckpts
    files = os.listdir(os.path.join(run_dir, "checkpoints", sorted(ckpts)[-1]))
    assert {"__0_0.distcp", "__1_0.distcp", "rng-rank0.json", "rng-rank1.json", "COMPLETE"} <= set(files)


def test_two_ranks_take_the_steps_of_one_rank_with_the_global_batch(two_rank_job, tmp_path):
    name, run_dir = two_rank_job
    cfg = make_config(str(tmp_path / "one"), _data_of(run_dir), model=name,
                      extra=COMMON + [f"data.batch_size={2 * RANK_BATCH}"])
    ref = Trainer(cfg)
    parts = [ref.dataset.read(r, 2)["train"] for r in range(2)]
    steps = min(len(p) // RANK_BATCH for p in parts)  # what the 2-rank job ran (min over ranks)
    loaders = [BatchLoader(p, ref.schema.feature_names, RANK_BATCH, shuffle=True, seed=cfg.train.seed,
                           drop_last=True, num_batches=steps, prefetch=0) for p in parts]
    ref.train_loader = lambda: UnionOfRanks(loaders, ref.schema.feature_names)  # type: ignore[method-assign]
    ref_result = ref.fit()

    for tag in ["train/loss"] + [f"train/loss/{t}" for t in ref.schema.task_names]:
        two, one = scalars(run_dir, tag), scalars(cfg.run_dir, tag)
        assert sorted(two) == sorted(one) == list(range(1, STEPS + 1)), tag
        a = np.array([two[s] for s in sorted(two)])
        b = np.array([one[s] for s in sorted(one)])
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=tag)
    two_result = json.load(open(os.path.join(run_dir, "metrics.json")))
    for task in ref.schema.task_names:
        key = f"{task}/auc"
        assert two_result["valid"][key] == pytest.approx(ref_result["valid"][key], abs=1e-5), key


def _data_of(run_dir: str) -> str:
    import yaml

    return yaml.safe_load(open(os.path.join(run_dir, "config.yaml")))["data"]["path"]


def test_two_rank_checkpoint_evaluates_identically_on_one_rank(two_rank_job, tmp_path):
    name, run_dir = two_rank_job
    out = tmp_path / "eval.json"
    args = ["eval", "-c", "configs/wide_deep_synthetic.yaml", "--data", _data_of(run_dir), "--run-dir", run_dir,
            "--set", f"model.name={name}", "--set", f"data.batch_size={RANK_BATCH}", "--out", str(out)]
    for item in COMMON:
        args += ["--set", item]
    assert main(args) == 0
    one = json.load(open(out))
    two = json.load(open(os.path.join(run_dir, "metrics.json")))["test"]
    assert one["rows"] == two["rows"]
    # the same rows and scores: AUCs (rank statistics) are equal; means differ by float summation order at most
    for key, value in two.items():
        if key.endswith("/auc"):
            assert one[key] == pytest.approx(value, abs=1e-12, nan_ok=True), key
        elif key.endswith("/logloss") or key.endswith("/rmse"):
            assert one[key] == pytest.approx(value, rel=1e-6, nan_ok=True), key
