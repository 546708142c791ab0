import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from recsys.cli import main
from recsys.models import model_names
from recsys.train.board import event_dir
from recsys.train.trainer import Trainer


def table_weights(trainer: Trainer, table: str) -> torch.Tensor:
    sd = trainer.dmp.state_dict()
    key = next(k for k in sd if k.endswith(f"embedding_bags.{table}.weight"))
    return sd[key].local_shards()[0].tensor.detach().clone()


def scores(trainer: Trainer, split: str = "test"):
    preds = trainer.predictions(split)
    order = np.argsort(preds.row_id)
    return {t: preds.scores[t][order] for t in trainer.schema.task_names}


def test_fused_update_touches_exactly_the_rows_seen(tiny_config):
    trainer = Trainer(tiny_config())
    batch = next(iter(trainer.train_loader()))
    before = {t: table_weights(trainer, t) for t in ("user_id", "host_id", "user_id__wide")}
    trainer.optimizer.zero_grad()
    loss, _ = trainer.dmp(batch)
    loss.backward()
    trainer.optimizer.step()
    jt = batch.sparse.to_dict()
    for table, feature in (("user_id", "user_id"), ("host_id", "host_id"), ("user_id__wide", "user_id")):
        after = table_weights(trainer, table)
        changed = set(torch.nonzero((after != before[table]).any(dim=1)).flatten().tolist())
        assert changed == set(jt[feature].values().tolist()), table


def test_checkpoint_round_trip_gives_identical_predictions(tiny_config):
    cfg = tiny_config()
    first = Trainer(cfg)
    first.fit()
    expected = scores(first)
    path = first.save()
    second = Trainer(cfg, fit_data=False)
    second.load(path, restore_loop=False, model_only=True)
    got = scores(second)
    for task in expected:
        np.testing.assert_array_equal(got[task], expected[task])


@pytest.mark.parametrize("sharding", [
    [],
    # data-parallel tables: their row-wise Adagrad state lives in a regular optimizer, not in FBGEMM
    ["sharding.tables={hour: {sharding_types: [data_parallel]}, gender: {sharding_types: [data_parallel]}}"],
], ids=["fused", "data_parallel_tables"])
def test_resume_mid_epoch_matches_uninterrupted_run_bitwise(tiny_config, sharding):
    extra = ["train.epochs=2", "train.early_stopping.patience=100", "model.params={dropout: 0.2}"] + sharding
    straight = Trainer(tiny_config(extra=extra, run="a"))
    straight.fit()
    steps = straight.state.step
    reference = scores(Trainer(tiny_config(extra=extra, run="a"), resume=True))  # loads the newest checkpoint

    interrupted = Trainer(tiny_config(extra=extra + [f"train.max_steps={steps // 2 + 3}"], run="b"))
    interrupted.fit()
    assert interrupted.state.step == steps // 2 + 3 and interrupted.state.batch_in_epoch > 0
    resumed = Trainer(tiny_config(extra=extra, run="b"), resume=True)
    assert resumed.state.step == steps // 2 + 3
    resumed.fit()
    assert resumed.state.step == steps
    final = scores(Trainer(tiny_config(extra=extra, run="b"), resume=True))
    for task in reference:
        np.testing.assert_array_equal(final[task], reference[task])


def test_pipeline_matches_plain_loop(tiny_config):
    plain = Trainer(tiny_config(extra=["train.pipeline=plain"], run="plain"))
    plain.fit()
    piped = Trainer(tiny_config(extra=["train.pipeline=sparse_dist"], run="piped"))
    piped.fit()
    assert piped.stepper.pipeline_started
    a, b = scores(plain), scores(piped)
    for task in a:
        np.testing.assert_allclose(a[task], b[task], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", model_names())
def test_every_registered_model_trains_under_dmp_with_the_pipeline(tiny_config, name):
    trainer = Trainer(tiny_config(model=name, extra=["train.pipeline=sparse_dist", "train.max_steps=4"]))
    result = trainer.fit()
    report = result["valid"]
    for task in trainer.schema.task_names:
        key = f"{task}/auc" if trainer.schema.task(task).kind == "binary" else f"{task}/rmse"
        assert np.isfinite(report[key]), (name, key)


def test_non_finite_loss_stops_with_step_and_checkpoint(tiny_config):
    from recsys.train.trainer import NonFiniteLoss

    trainer = Trainer(tiny_config(extra=["train.dense_optimizer.lr=1e30", "train.dense_optimizer.name=sgd",
                                         "train.epochs=3"]))
    with pytest.raises(NonFiniteLoss, match=r"loss became (nan|inf) at step \d+ .*last good checkpoint"):
        trainer.fit()


def test_cli_train_eval_predict_and_tensorboard(tmp_path, tiny_world, capsys):
    from recsys.train.metrics import format_table  # noqa: F401 - table printed by the CLI

    run = tmp_path / "cli"
    common = ["-c", "configs/wide_deep_synthetic.yaml", "--data", tiny_world, "--run-dir", str(run),
              "--set", "train.epochs=2", "--set", "data.batch_size=256", "--set", "train.progress=false"]
    assert main(["train"] + common) == 0
    out = capsys.readouterr().out
    assert "| ctr | all |" in out and "scenario=feed" in out
    metrics = json.load(open(run / "metrics.json"))
    report_file = tmp_path / "eval.json"
    assert main(["eval"] + common + ["--out", str(report_file)]) == 0
    evaluated = json.load(open(report_file))
    assert evaluated["ctr/auc"] == pytest.approx(metrics["test"]["ctr/auc"], abs=1e-9)
    preds = tmp_path / "scores.parquet"
    assert main(["predict"] + common + ["--out", str(preds)]) == 0
    table = pq.read_table(preds)
    assert table.num_rows == metrics["test"]["rows"]
    assert {"row_id", "score_ctr", "score_stay", "score_cvr"} <= set(table.column_names)
    events = [f for f in os.listdir(event_dir(str(run))) if f.startswith("events")]
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(event_dir(str(run)))
    acc.Reload()
    assert {"1_train/loss", "2_valid/ctr/auc", "1_train/samples_per_sec"} <= set(acc.Tags()["scalars"])


def test_predict_scores_every_row_of_new_files(tmp_path, tiny_world, capsys):
    from recsys.data.synthetic import WorldConfig, generate

    new_world = str(tmp_path / "new")
    generate(WorldConfig(rows=1500, users=300, hosts=40, items=120, seed=9, rows_per_file=1000), new_world,
             progress=False)
    run = tmp_path / "run"
    common = ["-c", "configs/wide_deep_synthetic.yaml", "--run-dir", str(run), "--set", "train.epochs=1",
              "--set", "data.batch_size=256", "--set", "train.progress=false", "--set", "tensorboard=false"]
    assert main(["train", "--data", tiny_world] + common) == 0
    out = tmp_path / "new_scores.parquet"
    assert main(["predict", "--data", new_world, "--split", "all", "--out", str(out)] + common) == 0
    table = pq.read_table(out)
    assert sorted(table.column("row_id").to_pylist()) == list(range(1500))
    assert np.isfinite(table.column("score_ctr").to_numpy()).all()


@pytest.mark.parametrize("steps,metric", [
    ((3, 6), "ctr/auc"),  # validated at 3 and 6: the newest model, if the best, is in memory
    ((6,), "ctr/auc"),
    ((3, 6), "ctr/count"),  # the same value twice: step 3 stays the best, so it is reloaded
], ids=["two_validations", "one_validation", "earlier_best"])
def test_final_report_reuses_the_validation_of_the_model_in_memory_only_when_it_is_the_best(tiny_config, steps,
                                                                                             metric):
    trainer = Trainer(tiny_config(extra=[f"train.eval_every_steps={steps[0]}", f"train.max_steps={steps[-1]}",
                                         f"train.early_stopping.metric={metric}"]))
    evaluated = []
    evaluate = trainer.evaluate
    loads = []
    load = trainer.load

    def counting(split="test"):
        evaluated.append(split)
        return evaluate(split)

    def counting_load(path, **kwargs):
        loads.append(os.path.basename(path))
        return load(path, **kwargs)

    trainer.evaluate, trainer.load = counting, counting_load
    result = trainer.fit()
    validations = len(steps)
    assert [h["step"] for h in result["history"]] == list(steps)  # each validated step once
    if metric == "ctr/count":
        assert result["best_step"] == 3
    if result["best_step"] == steps[-1]:  # the model in memory: no reload, no second pass over valid
        assert evaluated.count("valid") == validations and loads == []
    else:  # an earlier step was the best: reloaded and evaluated again
        assert evaluated.count("valid") == validations + 1 and loads == [f"step-{result['best_step']:08d}"]
    # the report is the one a fresh pass over the best model gives
    again = Trainer(trainer.cfg, fit_data=False)
    again.load(trainer.folder.checkpoint(f"step-{result['best_step']:08d}"), restore_loop=False, model_only=True)
    np.testing.assert_equal(again.evaluate("valid"), result["valid"])  # NaN == NaN here
