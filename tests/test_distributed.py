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
import torch
from conftest import REPO, make_config

from recsys.cli import main
from recsys.data.batch import Batch
from recsys.data.columns import Columns
from recsys.data.loader import BatchLoader
from recsys.models import model_names, register_model
from recsys.models.wide_deep import WideDeep
from recsys.train.trainer import Trainer

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

    from recsys.train.board import event_dir

    acc = EventAccumulator(event_dir(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars(tag)}


def projector(run_dir: str, table: str, step: int):
    """The rows and labels the projector holds for a feature table at ``step``."""
    from recsys.train.board import event_dir

    folder = os.path.join(event_dir(run_dir), f"{step:05d}", f"embeddings%2f{table}")
    rows = np.loadtxt(os.path.join(folder, "tensors.tsv"), delimiter="\t", dtype=np.float32)
    return rows, open(os.path.join(folder, "metadata.tsv")).read().splitlines()


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

    for tag in ["1_train/loss"] + [f"1_train/loss/{t}" for t in ref.schema.task_names]:
        two, one = scalars(run_dir, tag), scalars(cfg.run_dir, tag)
        assert sorted(two) == sorted(one) == list(range(1, STEPS + 1)), tag
        a = np.array([two[s] for s in sorted(two)])
        b = np.array([one[s] for s in sorted(one)])
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=tag)
    two_result = json.load(open(os.path.join(run_dir, "metrics.json")))
    for task in ref.schema.task_names:
        key = f"{task}/auc"
        assert two_result["valid"][key] == pytest.approx(ref_result["valid"][key], abs=1e-5), key
    # the projector's sample of the column-wise tables: gathered from both ranks' shards, the 1-rank rows
    for table in ("user_id", "item_id", "host_id"):
        two_rows, two_labels = projector(run_dir, table, STEPS)
        one_rows, one_labels = projector(cfg.run_dir, table, STEPS)
        assert two_labels == one_labels and len(one_labels) > 0 and two_rows.shape == (len(one_labels), 16)
        np.testing.assert_allclose(two_rows, one_rows, rtol=1e-5, atol=1e-5, err_msg=table)


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


# --- model-specific state (a per-user tracker) through sharded checkpoints --------------------------------------
class TrackedWideDeep(WideDeep):
    """Wide & Deep with per-user tracker buffers (as STAN keeps user state): ``user_last_row`` holds the largest
    training row id seen per user and is merged over ranks by ``sync_state()`` (an all-reduce max);
    ``user_rows_local`` counts this rank's rows per user and is left per-rank on purpose."""

    def __init__(self, schema, config) -> None:
        super().__init__(schema, config)
        users = schema.feature(schema.user_feature).num_embeddings
        self.register_buffer("user_last_row", torch.full((users,), -1, dtype=torch.int64))
        self.register_buffer("user_rows_local", torch.zeros(users, dtype=torch.int64))

    def forward(self, batch: Batch):
        if self.training:
            with torch.no_grad():
                real = batch.row_id >= 0
                users, rows = batch.user[real], batch.row_id[real]
                self.user_last_row.scatter_reduce_(0, users, rows, "amax")
                self.user_rows_local.index_add_(0, users, torch.ones_like(users))
        return super().forward(batch)

    def sync_state(self) -> None:
        if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            torch.distributed.all_reduce(self.user_last_row, op=torch.distributed.ReduceOp.MAX)


TRACKED = "test_tracked_wide_deep"
LAUNCHER = """import sys
sys.path.insert(0, {tests!r})
from recsys.models.base import register_model
from test_distributed import TRACKED, TrackedWideDeep
register_model(TRACKED)(TrackedWideDeep)
from recsys.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture
def tracked_model():
    from recsys.models import base

    register_model(TRACKED)(TrackedWideDeep)
    yield TRACKED
    base._REGISTRY.pop(TRACKED, None)


def test_per_user_tracker_state_is_merged_checkpointed_and_loaded_on_one_rank(tracked_model, tmp_path, tiny_world):
    run_dir = str(tmp_path / "tracked")
    script = tmp_path / "launch.py"
    script.write_text(LAUNCHER.format(tests=os.path.dirname(os.path.abspath(__file__))))
    steps = 4
    overrides = [f"model.name={TRACKED}", f"data.batch_size={RANK_BATCH}", f"train.max_steps={steps}",
                 "train.progress=false", "tensorboard=false", "model.params={hidden: [16]}", "model.embedding_dim=8"]
    args = ["train", "-c", "configs/wide_deep_synthetic.yaml", "--data", tiny_world, "--run-dir", run_dir]
    for item in overrides:
        args += ["--set", item]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), *args]
    proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-6000:]
    # the per-rank counter differs across ranks: the trainer says a checkpoint keeps one copy of it
    warning = [line for line in proc.stderr.splitlines() if "model state differs across ranks" in line]
    assert warning and "user_rows_local" in warning[0] and "user_last_row" not in warning[0]

    one = Trainer(make_config(run_dir, tiny_world, model=TRACKED, extra=overrides), fit_data=False)
    one.load(os.path.join(run_dir, "checkpoints", f"step-{steps:08d}"), restore_loop=False, model_only=True)
    loaded = dict(one.dmp.named_buffers())
    got = next(v for k, v in loaded.items() if k.endswith("user_last_row"))

    # what both ranks saw in their first `steps` batches
    parts = [one.dataset.read(r, 2)["train"] for r in range(2)]
    n = min(len(p) // RANK_BATCH for p in parts)
    loaders = [BatchLoader(p, one.schema.feature_names, RANK_BATCH, shuffle=True, seed=one.cfg.train.seed,
                           drop_last=True, num_batches=n, prefetch=0) for p in parts]
    expected = torch.full_like(got, -1)
    for i, batch in enumerate(UnionOfRanks(loaders, one.schema.feature_names)):
        if i == steps:
            break
        expected.scatter_reduce_(0, batch.user, batch.row_id, "amax")
    assert (expected >= 0).sum() > 100
    assert torch.equal(got, expected)
