"""STAN (recsys/models/stan.py) and its lifecycle blocks (recsys/modules/lifecycle.py)."""

import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from calib_helpers import materialise

from recsys.config import ModelConfig
from recsys.data.columns import Columns, Ragged
from recsys.data.history import history_keys
from recsys.errors import ConfigError
from recsys.models import build_model
from recsys.modules.lifecycle import PREFERENCE, BetaTracker, UserStateBranch, state_loss
from recsys.schema import DenseFeature, Schema, SparseFeature, Task
from recsys.train.losses import MultiTaskLoss, TrainModule

TASKS = ("ctr", "stay", "cvr")
SCHEMA = Schema(
    sparse=(SparseFeature("user", 20, 8, group="user"), SparseFeature("age", 5, 8, group="user"),
            SparseFeature("interests", 6, 8, group="user", multi_hot=True, pooling="mean"),
            SparseFeature("host", 10, 8, group="host"), SparseFeature("hour", 24, 8, group="context")),
    dense=(DenseFeature("x"),),
    tasks=(Task("ctr"), Task("stay", kind="regression", depends_on="ctr", loss="log_mse", eval_threshold=60.0),
           Task("cvr", depends_on="ctr")),
    user_feature="user",
    eval_groups=(("stage", ("new", "wandering", "sticky", "loyal")),),
    history_tasks=TASKS,
)


def tiny_batch(n=8, seed=0, users=None):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 3, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    user = np.asarray(users if users is not None else rng.integers(0, 20, n))
    click = (rng.random(n) < 0.6).astype(np.float32)
    history = {k: rng.random(n).astype(np.float32) for k in history_keys(TASKS)}
    for k in history:
        if k.endswith("count") or k == "count":
            history[k] = rng.integers(0, 4, n).astype(np.float32)
    cols = Columns(
        dense=rng.normal(size=(n, 1)).astype(np.float32),
        sparse={"user": user, "age": rng.integers(0, 5, n),
                "interests": Ragged(rng.integers(0, 6, offsets[-1]), offsets),
                "host": rng.integers(0, 10, n), "hour": rng.integers(0, 24, n)},
        labels={"ctr": click, "stay": click * rng.exponential(60, n).astype(np.float32),
                "cvr": click * (rng.random(n) < 0.5).astype(np.float32)},
        scenario=np.zeros(n, np.int64), user=user, weights=np.ones(n, np.float32), row_id=np.arange(n),
        groups={"stage": rng.integers(0, 4, n)}, history=history,
    )
    return cols.to_batch(SCHEMA.feature_names)


def stan(schema=SCHEMA, **params):
    return materialise(build_model(ModelConfig(name="stan", params={
        "expert_hidden": [16, 8], "tower_hidden": [8], "preference_hidden": [8], **params}), schema), 0.1)


@pytest.mark.parametrize("backbone", ["ple", "mmoe"])
def test_outputs_and_gradients_reach_the_right_tables_and_modules(backbone):
    torch.manual_seed(0)
    model = stan(backbone=backbone)
    batch = tiny_batch()
    out = model(batch)
    assert set(out) == set(TASKS) | {PREFERENCE + t for t in TASKS}
    assert all(v.shape == (8,) for v in out.values())
    # the state losses alone train the user tables (through the branch) but no host/context table or expert
    sum(model.extra_losses(batch, out).values()).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    for table in ("user", "age", "interests"):
        assert grads[f"sparse_arch.ebc.embedding_bags.{table}.weight"].abs().sum() > 0, table
    def zero(g):
        return g is None or not g.any()

    for table in ("host", "hour"):
        assert zero(grads[f"sparse_arch.ebc.embedding_bags.{table}.weight"]), table
    assert all(zero(g) for n, g in grads.items() if n.startswith(("backbone.", "towers.")))
    assert all(g is not None for n, g in grads.items() if n.startswith("state.heads."))
    # the task losses reach every table, the backbone, the towers and the branch's attention
    model.zero_grad()
    out = model(batch)
    sum(MultiTaskLoss(SCHEMA)(batch, out).values()).backward()
    for table in ("user", "age", "interests", "host", "hour"):
        assert model.sparse_arch.ebc.embedding_bags[table].weight.grad.abs().sum() > 0, table
    assert model.state.attention.in_proj_weight.grad.abs().sum() > 0
    assert model.state.units["cvr"].linear.weight.grad.abs().sum() > 0


def test_task_attention_varies_per_sample_and_per_task():
    torch.manual_seed(0)
    branch = UserStateBranch(num_features=3, dim=8, tasks=["a", "b"], heads=2, head_hidden=[4])
    u = torch.randn(5, 3, 8)
    state = branch.represent(u)
    wa, wb = branch.units["a"].weights(state), branch.units["b"].weights(state)
    torch.testing.assert_close(wa.sum(dim=1), torch.ones(5))
    assert (wa.std(dim=0) > 1e-4).any() and not torch.allclose(wa, wb)
    out = branch(u)
    torch.testing.assert_close(out["a"], state * wa * 24)  # s_k = U' * softmax(W_k U') * width
    # self-attention mixes features: changing one feature moves every position of U'
    moved = u.clone()
    moved[:, 0] += 1.0
    delta = (branch.represent(moved) - state).view(5, 3, 8).abs().sum(dim=(0, 2))
    assert (delta > 0).all()


def test_state_loss_matches_hand_computation_and_uses_the_history():
    torch.manual_seed(0)
    model = stan()
    batch = tiny_batch(n=6)
    out = model(batch)
    losses = model.extra_losses(batch, out)
    for t in TASKS:
        p = torch.sigmoid(out[PREFERENCE + t]).detach().numpy()
        target = batch.history[f"{t}/mean"].numpy()
        known = batch.history[f"{t}/count"].numpy() > 0
        expected = ((p - target) ** 2)[known].sum() / max(known.sum(), 1)
        assert float(losses[f"state/{t}"].detach()) == pytest.approx(expected, rel=1e-5)
    assert float(state_loss(torch.zeros(3), torch.ones(3), torch.zeros(3, dtype=torch.bool))) == 0.0


def algorithm_1(predictions):
    """STAN's Algorithm 1 for one user and task, samples in time order."""
    alpha = beta = 1.0
    counter = 0
    for p in predictions:
        counter += 1
        alpha += p * counter
        beta += (1 - p) * counter
    return alpha, beta


def test_beta_update_matches_hand_computation_for_a_user_with_three_samples():
    tracker = BetaTracker(num_users=4, tasks=["ctr", "cvr"])
    # user 2's samples at time positions 1, 2, 3 arrive shuffled over two batches, with other users and padding
    p = {1: [0.2, 0.9], 2: [0.5, 0.4], 3: [0.8, 0.1]}
    first = tracker(torch.tensor([2, 0, -1]), torch.tensor([3.0, 1.0, 1.0]),
                    torch.tensor([p[3], [0.3, 0.3], [0.7, 0.7]]))
    tracker(torch.tensor([2, 2]), torch.tensor([1.0, 2.0]), torch.tensor([p[1], p[2]]))
    for k in range(2):
        # ctr: alpha 1 + 0.2 + 1.0 + 2.4, beta 1 + 0.8 + 1.0 + 0.6
        alpha, beta = algorithm_1([p[1][k], p[2][k], p[3][k]])
        torch.testing.assert_close(tracker.state[2, k], torch.tensor([alpha, beta, 3.0]))
    torch.testing.assert_close(tracker.state[2, 0, :2], torch.tensor([4.6, 3.4]))
    torch.testing.assert_close(tracker.state[0, :, 0], torch.tensor([1.3, 1.3]))
    assert torch.equal(tracker.state[[1, 3]], BetaTracker(4, ["ctr", "cvr"]).state[[1, 3]])  # padding: no update
    assert first.shape == (3, 2) and ((first > 0) & (first < 1)).all()
    # gamma is a draw from Beta(alpha, beta) of the state after the batch's update
    torch.manual_seed(7)
    gamma = tracker(torch.tensor([1, 1]), torch.tensor([1.0, 2.0]), torch.tensor([[0.5, 0.5], [1.0, 0.0]]))
    torch.manual_seed(7)
    s = tracker.state[1]
    expected = torch.distributions.Beta(s[:, 0], s[:, 1]).sample((1,))[0]
    torch.testing.assert_close(gamma[0], expected)
    # evaluation: no update, the mean, no random draw
    tracker.eval()
    before, rng = tracker.state.clone(), torch.get_rng_state()
    mean = tracker(torch.tensor([2]), torch.tensor([4.0]), torch.tensor([[0.0, 0.0]]))
    assert torch.equal(tracker.state, before) and torch.equal(torch.get_rng_state(), rng)
    torch.testing.assert_close(mean[0, 0], torch.tensor(4.6 / 8.0))


def test_gamma_carries_no_gradient():
    torch.manual_seed(0)
    for weighting in ("beta", "prediction"):
        model = stan(loss_weighting=weighting, state_loss_weight=0.0)
        batch = tiny_batch()
        out = model(batch)
        gamma = model.loss_weights(batch, out)
        assert set(gamma) == set(TASKS) and not any(g.requires_grad for g in gamma.values())
        assert (torch.stack(list(gamma.values())).std() > 0)  # varies per sample
        if weighting == "prediction":
            torch.testing.assert_close(gamma["cvr"], torch.sigmoid(out[PREFERENCE + "cvr"]).detach())
        loss, _ = TrainModule(model, MultiTaskLoss(SCHEMA))(batch)
        loss.backward()
        # gamma multiplies every task loss, yet no gradient reaches the preference heads through it
        heads = [p.grad for n, p in model.named_parameters() if n.startswith("state.heads.")]
        assert all(g is None or not g.any() for g in heads)
        assert model.towers["ctr"].output.weight.grad.abs().sum() > 0


def test_gamma_reweights_each_samples_task_loss():
    torch.manual_seed(0)
    model = stan(loss_weighting="prediction")
    batch = tiny_batch()
    out = model(batch)
    gamma = model.loss_weights(batch, out)
    weighted = MultiTaskLoss(SCHEMA)(batch, out, gamma)
    plain = torch.nn.functional.binary_cross_entropy_with_logits(out["ctr"], batch.labels["ctr"], reduction="none")
    assert float(weighted["ctr"].detach()) == pytest.approx(float((gamma["ctr"] * plain).mean().detach()), rel=1e-5)


def test_ablations_and_refusals():
    torch.manual_seed(0)
    plain = stan(state_branch=False)
    out = plain(tiny_batch())
    assert set(out) == set(TASKS) and plain.loss_weights(tiny_batch(), out) == {}
    assert plain.extra_losses(tiny_batch(), out) == {} and plain.tracker is None
    assert stan(loss_weighting="prediction").tracker is None
    assert stan(loss_weighting="none").loss_weights(tiny_batch(), out) == {}
    no_history = Schema(sparse=SCHEMA.sparse, tasks=SCHEMA.tasks, user_feature="user")
    with pytest.raises(ConfigError, match="label history, missing for"):
        stan(no_history)
    with pytest.raises(ConfigError, match="equal embedding widths"):
        stan(Schema(sparse=(SparseFeature("user", 20, 8, group="user"), SparseFeature("age", 5, 4, group="user")),
                    tasks=SCHEMA.tasks, user_feature="user", history_tasks=TASKS))
    with pytest.raises(ConfigError, match="needs the state branch"):
        stan(state_branch=False, loss_weighting="prediction")


def test_projector_collects_state_embeddings_with_stage_labels_in_evaluation_only():
    torch.manual_seed(0)
    model = stan(projector_rows=10)
    batch = tiny_batch(n=8)
    model(batch)
    assert model.projectors["ctr"].tensorboard_embeddings() == {}
    model.eval()
    with torch.no_grad():
        out = model(batch)
        model(batch)
    rows, labels = model.projectors["ctr"].tensorboard_embeddings()["stan/state_embedding/ctr"]
    assert rows.shape == (10, model.state.output_dim)
    names = ("new", "wandering", "sticky", "loyal")
    assert labels[:8] == [names[i] for i in batch.groups["stage"].tolist()]
    model.eval()  # a new evaluation starts empty
    assert model.projectors["ctr"].tensorboard_embeddings() == {}
    assert out["ctr"].shape == (8,)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tracker_replicas_combine_every_ranks_updates(tmp_path):
    from dist_workers import two_rank_tracker

    mp.spawn(two_rank_tracker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    s0, s1 = (torch.load(tmp_path / f"state-{r}.pt") for r in range(2))
    assert torch.equal(s0, s1)
    alpha, beta = algorithm_1([0.2, 0.6, 1.0])  # user 1: positions 1, 2 on rank 0, position 3 on rank 1
    torch.testing.assert_close(s0[1, 0], torch.tensor([alpha, beta, 3.0]))
    torch.testing.assert_close(s0[0, 0], torch.tensor([1.5, 1.5, 1.0]))


# --- under the trainer (DMP, checkpoints, TensorBoard) ------------------------------------------------------
def tracker_state(trainer) -> torch.Tensor:
    return trainer.dmp.state_dict()["model.tracker.state"].detach().clone()


def test_tracker_state_survives_a_checkpoint_round_trip_and_tensorboard_logs_it(tiny_config):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from recsys.train.board import event_dir
    from recsys.train.trainer import Trainer

    cfg = tiny_config(model="stan", extra=["train.max_steps=6", "tensorboard=true", "train.log_every_steps=2",
                                           "model.params={projector_rows: 50}"])
    first = Trainer(cfg)
    first.fit()
    trained = tracker_state(first)
    assert trained[:, :, 2].sum() == 6 * 256 * 3  # every training row updated each task once
    path = first.save()
    second = Trainer(cfg, fit_data=False)
    fresh = tracker_state(second)
    assert (fresh[:, :, :2] == 1).all() and (fresh[:, :, 2] == 0).all()
    second.load(path, restore_loop=False, model_only=True)
    assert torch.equal(tracker_state(second), trained)
    # TensorBoard: gamma per task as histograms, the state-aware user embeddings in the projector with stages
    tb = event_dir(cfg.run_dir)
    acc = EventAccumulator(tb)
    acc.Reload()
    gammas = {f"4_model/tracker/gamma/{task}" for task in ("ctr", "stay", "cvr")}
    assert gammas <= set(acc.Tags()["histograms"])
    projector = open(os.path.join(tb, "projector_config.pbtxt")).read()
    assert "stan/state_embedding/ctr" in projector and "stan/state_embedding/cvr" in projector
    meta = [os.path.join(r, f) for r, _, fs in os.walk(tb) for f in fs if f == "metadata.tsv"]
    labels = open(meta[0]).read().split()
    assert len(labels) == 50 and set(labels) <= {"new", "wandering", "sticky", "loyal"} and len(set(labels)) > 1


def test_resume_mid_epoch_restores_the_tracker_bitwise(tiny_config):
    from recsys.train.trainer import Trainer

    extra = ["train.epochs=2", "train.early_stopping.patience=100", "train.pipeline=sparse_dist"]
    straight = Trainer(tiny_config(model="stan", extra=extra, run="a"))
    straight.fit()
    steps = straight.state.step
    reference = Trainer(tiny_config(model="stan", extra=extra, run="a"), resume=True)  # the newest checkpoint

    interrupted = Trainer(tiny_config(model="stan", extra=extra + [f"train.max_steps={steps // 2 + 3}"], run="b"))
    interrupted.fit()
    resumed = Trainer(tiny_config(model="stan", extra=extra, run="b"), resume=True)
    assert resumed.state.step == steps // 2 + 3 and resumed.state.batch_in_epoch > 0
    assert not torch.equal(tracker_state(resumed), tracker_state(reference))
    resumed.fit()
    final = Trainer(tiny_config(model="stan", extra=extra, run="b"), resume=True)
    assert torch.equal(tracker_state(final), tracker_state(reference))
    a, b = final.predictions("test"), reference.predictions("test")
    for task in ("ctr", "stay", "cvr"):
        np.testing.assert_array_equal(a.scores[task][np.argsort(a.row_id)], b.scores[task][np.argsort(b.row_id)])
