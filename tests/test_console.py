"""What a person sees: the console of a CLI run (not a terminal), progress bars on a terminal, library warnings
kept out of the default output, the one-line sharding plan, and what TensorBoard gets from a run."""

import io
import logging
import math
import os
import re
import subprocess
import sys
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from conftest import REPO

from recsys import console
from recsys.console import BarSafeHandler, Progress
from recsys.train.sharding import Capacities, PlanReport, TablePlacement

# anything Python's warnings module prints, and torch's C++/logging warnings ("[rank0]:W1201 ...")
WARNING_LINE = re.compile(r"\b\w*Warning: |^\[rank\d+\]:W|is_fx_tracing", re.MULTILINE)


def run_cli(args, tmp_path):
    """``python -m recsys ARGS`` with stdout and stderr as pipes (not a terminal), default warning filters."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "COLUMNS")}
    env["PYTHONPATH"] = os.pathsep.join([REPO] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    proc = subprocess.run([sys.executable, "-m", "recsys", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout, proc.stderr


def test_cli_output_is_our_own_one_plan_line_no_bars_and_the_loss(tmp_path, tiny_world):
    run = str(tmp_path / "run")
    common = ["-c", "configs/wide_deep_synthetic.yaml", "--data", tiny_world, "--run-dir", run,
              "--set", "data.batch_size=256", "--set", "model.embedding_dim=8", "--set", "train.epochs=2",
              "--set", "sharding.tables={hour: {sharding_types: [data_parallel]}}"]  # the dense-kernel warnings too
    out, err = run_cli(["train"] + common, tmp_path)  # progress bars and TensorBoard on: the defaults
    eval_out, eval_err = run_cli(["eval", "--run-dir", run], tmp_path)  # loads the sharded checkpoint (DCP)
    for text in (out, err, eval_out, eval_err):
        assert not WARNING_LINE.search(text), text
        assert "\r" not in text and "%|" not in text, text  # no tqdm output at all when not a terminal
    for text in (err, eval_err):
        plan = [line for line in text.splitlines() if "sharding plan" in line]
        assert len(plan) == 1 and plan[0].startswith("sharding plan: 32 tables on 1 cpu rank (31 table_wise, "
                                                     "1 data_parallel; kernels fused, dense), per rank "), text
        assert "| table |" not in text and "| ranks |" not in text
        assert "Sharding spec not found" not in text and "caching params will be ignored" not in text
    lines = err.splitlines()
    epochs = [i for i, line in enumerate(lines) if re.fullmatch(
        r"epoch [12]/2: 18 steps in \d+\.\d s, mean loss \d+\.\d{4}, [\d,]+ samples/s", line)]
    valids = [i for i, line in enumerate(lines) if re.fullmatch(r"step (18|36): valid ctr/auc = 0\.\d{5} \(best.*\)",
                                                               line)]
    assert len(epochs) == 2 and len(valids) == 2, err
    assert epochs[0] < valids[0] < epochs[1] < valids[1]  # each epoch's line before its validation's
    assert "| ctr | all |" in out and "| ctr | all |" in eval_out

    # -v: the full plan and the library's warnings come back
    _, verbose = run_cli(["-v", "eval", "--run-dir", run], tmp_path)
    assert "| table | rows | dim | sharding |" in verbose and "| hour | 25 | 8 | data_parallel |" in verbose
    assert "deprecating ShardedTensor" in verbose and "is_fx_tracing" in verbose


def test_progress_off_a_terminal_prints_plain_lines_with_eta(caplog, monkeypatch):
    stream = io.StringIO()  # not a terminal
    monkeypatch.setattr(sys, "stderr", stream)
    with caplog.at_level(logging.INFO, logger="recsys"):
        with Progress("epoch 1/2", total=4, unit="step", enabled=True, interval=0.0) as bar:
            for step in range(4):
                bar.note(f"loss {0.5 - step / 10:.4f}")
                bar.update()
    assert stream.getvalue() == ""
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 5  # one per update, one at the end of a pass that printed any
    assert re.fullmatch(r"epoch 1/2: 1/4 steps \(25%\), [\d,.]+ steps/s, ETA \d\d:\d\d; loss 0\.5000", lines[0])
    assert re.fullmatch(r"epoch 1/2: 4/4 steps \(100%\), [\d,.]+ steps/s, done in \d\d:\d\d; loss 0\.2000", lines[-1])
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="recsys"):
        with Progress("fit", total=None, enabled=True) as bar:  # shorter than the interval: silent
            bar.update(10)
        with Progress("fit", total=10, enabled=False, interval=0.0) as bar:
            bar.update(10)
    assert caplog.records == []


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bars_on_a_terminal_end_at_100_percent_and_log_lines_are_not_glued(monkeypatch):
    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    logger = logging.getLogger("recsys.test_console")
    handler = BarSafeHandler(term)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        # a CSV estimate said 95 rows; the pass read 100: the bar still ends complete
        with Progress("fit", total=95, unit="row", enabled=True, leave=True, estimated=True) as bar:
            for i in range(100):
                bar.update()
                if i == 50:
                    logger.warning("step 50: valid ctr/auc = 0.75")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    segments = re.split(r"[\r\n]", term.getvalue())
    assert "step 50: valid ctr/auc = 0.75" in segments  # a segment of its own: never after a bar's text
    final = [s for s in segments if s.startswith("fit:")][-1]
    assert "100%" in final and "100/100" in final, final


def test_a_python_users_console_handler_prints_above_the_bars(monkeypatch):
    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    logger = logging.getLogger("recsys")
    plain = logging.StreamHandler(sys.stderr)  # as logging.basicConfig makes it
    logger.addHandler(plain)
    monkeypatch.setattr(logger, "propagate", False)
    monkeypatch.setattr(logger, "level", logging.INFO)
    try:
        with console.bar_safe_logging(True):
            assert type(logger.handlers[-1]) is BarSafeHandler
            with Progress("epoch 1/1", total=10, unit="step", enabled=True, leave=True) as bar:
                for i in range(10):
                    bar.update()
                    if i == 4:
                        logger.info("step 5: valid ctr/auc = 0.7")
        assert logger.handlers[-1] is plain
    finally:
        logger.removeHandler(plain)
    segments = re.split(r"[\r\n]", term.getvalue())
    assert segments.count("step 5: valid ctr/auc = 0.7") == 1


def test_library_warnings_are_hidden_where_raised_and_shown_on_request(caplog):
    def raise_all():
        warnings.warn_explicit("Please use DTensor instead and we are deprecating ShardedTensor.", FutureWarning,
                               "planner_helpers.py", 1, module="torch.distributed.checkpoint.planner_helpers")
        warnings.warn_explicit("`broadcast_buffers` is deprecated.", FutureWarning, "model_parallel.py", 1,
                               module="torchrec.distributed.model_parallel")
        # the same message from our own code is ours to fix: never hidden
        warnings.warn_explicit("Please use DTensor instead and we are deprecating ShardedTensor.", FutureWarning,
                               "trainer.py", 1, module="recsys.train.trainer")
        warnings.warn_explicit("something else", FutureWarning, "x.py", 1, module="torchrec.distributed.x")
        logging.getLogger("torchrec.distributed.utils").warning(
            "Sharding Type is data_parallel, caching params will be ignored")

    for show, expected in ((False, 2), (True, 4)):
        console.show_library_warnings(show)
        try:
            caplog.clear()
            with warnings.catch_warnings(record=True) as caught, \
                    caplog.at_level(logging.WARNING, logger="torchrec.distributed.utils"):
                warnings.simplefilter("always")
                with console.quiet_library():
                    raise_all()
            assert len(caught) == expected, sorted(w.filename for w in caught)
            assert len([r for r in caplog.records if "caching params" in r.getMessage()]) == (1 if show else 0)
        finally:
            console.show_library_warnings(False)
    # torch's is_fx_tracing line is dropped for good (it comes from inside any forward pass), unless shown
    fx = logging.getLogger("torch.fx._symbolic_trace")
    record = fx.makeRecord(fx.name, logging.WARNING, __file__, 1, "is_fx_tracing will return true for both", (), None)
    assert not fx.filter(record)
    console.show_library_warnings(True)
    try:
        assert fx.filter(record)
    finally:
        console.show_library_warnings(False)


def test_python_api_shows_no_library_warnings(tiny_config):
    from recsys.train.trainer import Trainer

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = Trainer(tiny_config(extra=["train.max_steps=3",
                                             "sharding.tables={hour: {sharding_types: [data_parallel]}}"]))
        trainer.fit()  # DMP, fused optimizer, data-parallel backward, DCP save and load of the best checkpoint
    library = [f"{w.category.__name__} {w.filename}: {w.message}" for w in caught
               if any(re.search(m, str(w.message)) for _, m, _ in console.LIBRARY_WARNINGS)]
    assert library == []


def test_plan_summary_is_one_line_with_types_kernels_and_memory_per_rank():
    gib, mib = 1024**3, 1024**2
    caps = Capacities("h100", "cuda", 80 * gib, 256 * gib, None, "preset")
    tables = [TablePlacement(f"t{i}", 10, 8, kind, kernel, [0], [(10, 8)], 1, 0) for i, (kind, kernel) in enumerate(
        [("row_wise", "fused"), ("table_wise", "fused"), ("table_wise", "fused_uvm_caching")])]
    report = PlanReport(2, 2, 512, caps, tables, hbm_used=[3 * mib, 5 * mib], ddr_used=[0, 0],
                        hbm_cap=[80 * gib] * 2, ddr_cap=[256 * gib] * 2, planner_seconds=0.25)
    assert report.summary() == ("sharding plan: 3 tables on 2 cuda ranks (2 table_wise, 1 row_wise; kernels fused, "
                                "fused_uvm_caching), per rank 3.00 MiB to 5.00 MiB HBM of 80.00 GiB, 0 DDR of "
                                "256.00 GiB, planned in 0.2 s")
    assert "\n" not in report.summary()


def test_first_pass_knows_its_total(tmp_path):
    from recsys.data.reader import SourceReader, count_lines
    from recsys.data.spec import FileSpec

    table = pa.table({"a": list(range(1234)), "b": [f"x{i}" for i in range(1234)]})
    pq.write_table(table.slice(0, 1000), tmp_path / "p1.parquet")
    pq.write_table(table.slice(1000), tmp_path / "p2.parquet")
    pa_csv.write_csv(table, tmp_path / "t.csv")
    with open(tmp_path / "t.csv", "rb") as f:
        raw = f.read()
    (tmp_path / "no_last_newline.csv").write_bytes(raw.rstrip(b"\n"))
    parquet = SourceReader(FileSpec(str(tmp_path / "*.parquet")), "")
    assert parquet.quick_rows(None) == (1234, False)
    assert parquet.quick_rows(500) == (500, False)
    csv = SourceReader(FileSpec(str(tmp_path / "t.csv")), "")
    assert csv.quick_rows(None) == (1234, True)  # header excluded; an estimate (quoted line breaks)
    assert count_lines(str(tmp_path / "no_last_newline.csv")) == 1235
    (tmp_path / "t.csv.gz").write_bytes(b"\x1f\x8b")
    assert SourceReader(FileSpec(str(tmp_path / "t.csv.gz")), "").quick_rows(None) == (None, False)


# --- TensorBoard ---------------------------------------------------------------------------------------------
def test_tensorboard_holds_slices_named_optimizer_groups_hparams_and_feature_tables(tiny_config):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2
    from tensorboard.plugins.hparams import api_pb2
    from tensorboard.plugins.hparams import metadata as hp_metadata

    from recsys.train.board import event_dir
    from recsys.train.trainer import Trainer

    cfg = tiny_config(extra=["tensorboard=true", "train.log_every_steps=5", "train.task_weights.stay=0",
                             "train.grad_clip_norm=0.5", "train.dense_optimizer.lr=0.002"])
    trainer = Trainer(cfg)
    result = trainer.fit()  # one epoch of 18 steps, one validation (the best), the test at the end
    tb = event_dir(cfg.run_dir)
    assert os.path.basename(tb) == os.path.basename(cfg.run_dir) == "run"
    acc = EventAccumulator(tb, size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])

    def values(tag):
        return {e.step: e.value for e in acc.Scalars(tag)}

    # per-scenario validation and test metrics, equal to the reports
    scenes = ("feed", "follow", "nearby", "search")
    for scene in scenes:
        assert values(f"2_valid/ctr/auc/scenario={scene}")[18] == pytest.approx(
            result["valid"][f"ctr/auc/scenario={scene}"], abs=1e-6)
        assert values(f"3_test/cvr/auc/scenario={scene}")[18] == pytest.approx(
            result["test"][f"cvr/auc/scenario={scene}"], abs=1e-6)
    assert values("2_valid/best/ctr/auc") == {18: pytest.approx(result["valid"]["ctr/auc"], abs=1e-6)}
    # weight 0 and constants: not charted; the constants are a text table
    assert not [t for t in scalars if "/stay" in t], sorted(t for t in scalars if "/stay" in t)
    assert not [t for t in scalars if re.search(r"/(count|gauc_users|ndcg_skipped|pos_rate)(/|$)", t)]
    assert {"2_valid/counts/text_summary", "3_test/counts/text_summary"} <= set(acc.Tags()["tensors"])
    counts = acc.Tensors("2_valid/counts/text_summary")[0].tensor_proto.string_val[0].decode()
    assert f"| ctr | all | {int(result['valid']['ctr/count']):,} |" in counts

    # learning rates by optimizer group; gradient norms (clipped to 0.5, and before clipping)
    assert values("1_train/lr/embedding")[5] == pytest.approx(0.05)
    assert values("1_train/lr/dense")[5] == pytest.approx(0.002)
    assert not [t for t in scalars if re.fullmatch(r"1_train/lr/\d+", t)]
    before, after = values("1_train/grad_norm/before_clip"), values("1_train/grad_norm/dense")
    assert sorted(before) == sorted(after) == [5, 10, 15, 18]
    for step in before:
        assert after[step] == pytest.approx(min(before[step], 0.5), rel=1e-3)
    # distinct rows updated, per table (the wide copy left out): the user ids of the 5th batch
    loader = trainer.train_loader()
    loader.set_epoch(0)
    fifth = next(b for i, b in enumerate(loader) if i == 4)
    users = fifth.sparse.to_dict()["user_id"].values().unique().numel()
    assert values("1_train/rows_updated/user_id")[5] == users
    assert "1_train/rows_updated/user_id__wide" not in scalars
    assert "1_train/loss/ctr" in scalars and "1_train/samples_per_sec" in scalars

    # the Custom Scalars layout: a chart per task and metric with a line per scenario
    layout = layout_pb2.Layout.FromString(acc.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    category = next(c for c in layout.category if c.title == "valid by scenario")
    chart = next(c for c in category.chart if c.title == "ctr auc by scenario")
    pattern = re.compile(chart.multiline.tag[0])
    assert sorted(t for t in scalars if pattern.search(t)) == ["2_valid/ctr/auc"] + [
        f"2_valid/ctr/auc/scenario={s}" for s in scenes]
    assert any(c.title == "valid by stage" for c in layout.category)

    # hparams: the config and the final metrics
    content = acc.PluginTagToContent(hp_metadata.PLUGIN_NAME)
    start = hp_metadata.parse_session_start_info_plugin_data(content[hp_metadata.SESSION_START_INFO_TAG])
    assert start.hparams["model.name"].string_value == "wide_deep"
    assert start.hparams["train.dense_optimizer.lr"].number_value == pytest.approx(0.002)
    assert start.hparams["train.task_weights"].string_value == "ctr=1, stay=0, cvr=1"
    assert start.hparams["dataset"].string_value == "synthetic-live"
    experiment = hp_metadata.parse_experiment_plugin_data(content[hp_metadata.EXPERIMENT_TAG])
    metrics = [m.name.tag for m in experiment.metric_infos]
    assert {"2_valid/best/ctr/auc", "3_test/ctr/auc", "3_test/cvr/ctcvr_auc"} <= set(metrics) <= scalars
    assert not [m for m in metrics if "/stay/" in m]
    end = hp_metadata.parse_session_end_info_plugin_data(content[hp_metadata.SESSION_END_INFO_TAG])
    assert end.status == api_pb2.STATUS_SUCCESS

    # the projector: the user, item and host tables, their most frequent ids first, with their raw ids
    projector = open(os.path.join(tb, "projector_config.pbtxt")).read()
    for table in ("user_id", "item_id", "host_id"):
        assert f'tensor_name: "embeddings/{table}:00018"' in projector, projector
    folder = os.path.join(tb, "00018", "embeddings%2fuser_id")
    rows = np.loadtxt(os.path.join(folder, "tensors.tsv"), delimiter="\t", dtype=np.float32)
    labels = open(os.path.join(folder, "metadata.tsv")).read().splitlines()
    encoder = next(e for e in trainer.dataset.sparse if e.name == "user_id")
    assert labels == [str(v) for v in encoder.vocab.to_pylist()[:len(labels)]] and len(labels) == 300
    state = trainer.dmp.state_dict()
    key = next(k for k in state if k.endswith("embedding_bags.user_id.weight"))
    weights = state[key].local_shards()[0].tensor.detach().numpy()
    np.testing.assert_allclose(rows, weights[1:len(labels) + 1], rtol=1e-5, atol=1e-6)
    assert math.isfinite(result["test"]["ctr/auc"])


def test_projector_takes_the_largest_named_table_of_each_group():
    from torchrec.modules.embedding_configs import EmbeddingBagConfig

    from recsys.schema import Schema, SparseFeature
    from recsys.train.board import projector_tables

    features = (SparseFeature("user_id", 100, 8, group="user"), SparseFeature("item_id", 50, 8, group="item"),
                SparseFeature("item_hash", 500, 8, group="item"), SparseFeature("host_id", 9, 8, group="host"))
    schema = Schema(sparse=features, user_feature="user_id")

    def table(name, feature, dim):
        config = EmbeddingBagConfig(num_embeddings=10, embedding_dim=dim, name=name, feature_names=[feature])
        return name, ("ebc", config)

    tables = dict([table("user_id", "user_id", 8), table("user_id__wide", "user_id", 1),
                   table("item_id", "item_id", 8), table("item_hash", "item_hash", 8)])
    encodings = {"user_id": "vocab", "item_id": "identity", "item_hash": "hash", "host_id": "vocab"}
    # the item group's largest table is hashed (no names): its largest named one; host_id has no table here
    assert projector_tables(schema, encodings, tables) == [("user_id", "user_id"), ("item_id", "item_id")]
