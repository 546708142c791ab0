"""``recsys predict --input``: new (unlabelled) files scored through the run's encoders, streamed into one part
file per rank, raw columns kept, resumable by part, bad input refused with one line."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from test_distributed import torchrun
from test_serving import serving_config, serving_spec  # noqa: F401  (a fixture)

from recsys.cli import main
from recsys.train.metrics import auc
from recsys.train.trainer import Trainer

LABEL_COLUMNS = ["click", "stay_time", "order", "p_click", "p_order", "stage", "ts"]
KEEP = "user_id,item_id,row_id"


@pytest.fixture(scope="module")
def scored(tmp_path_factory, serving_spec, tiny_world):  # noqa: F811 - the fixture imported above
    """A Wide&Deep run (2 steps), its ``--split all`` scores, and two input files of the world's first two
    files' rows: ``labelled.parquet`` as generated and ``unlabelled.parquet`` without labels, oracle, groups
    and times."""
    tmp = tmp_path_factory.mktemp("predict")
    run = str(tmp / "run")
    Trainer(serving_config(run, serving_spec, tiny_world, "wide_deep",
                           ["train.max_steps=2", "data.eval_batch_size=300", "data.chunk_rows=700"])).fit()
    files = sorted(os.path.join(tiny_world, f) for f in os.listdir(tiny_world) if f.endswith(".parquet"))[:2]
    table = pa.concat_tables([pq.read_table(f) for f in files])
    labelled, unlabelled = str(tmp / "labelled.parquet"), str(tmp / "unlabelled.parquet")
    pq.write_table(table, labelled, row_group_size=1000)
    pq.write_table(table.drop_columns(LABEL_COLUMNS), unlabelled, row_group_size=1000)
    everything = str(tmp / "all.parquet")
    assert main(["predict", "--run-dir", run, "--split", "all", "--out", everything]) == 0
    return {"run": run, "tmp": tmp, "labelled": labelled, "unlabelled": unlabelled, "table": table,
            "all": pq.read_table(everything)}


def predict(scored, out: str, *inputs: str, extra=()) -> int:
    return main(["predict", "--run-dir", scored["run"], "--input", *inputs, "--out", out, *extra])


def test_unlabelled_rows_score_with_their_raw_ids_kept_and_the_scores_of_labelled_rows(scored):
    out = str(scored["tmp"] / "unlabelled-out")
    assert predict(scored, out, scored["unlabelled"], extra=["--keep-columns", KEEP]) == 0
    assert sorted(os.listdir(out)) == ["part-00000.parquet", "predict.json"]
    part = pq.read_table(os.path.join(out, "part-00000.parquet"))
    assert part.column_names == ["user_id", "item_id", "row_id", "score_ctr", "score_stay", "score_cvr"]
    # streamed: each batch of 300 rows (chunks of 700) is written when scored, not the whole file at the end
    assert pq.ParquetFile(os.path.join(out, "part-00000.parquet")).metadata.num_row_groups >= 5000 // 300
    table = scored["table"]
    for name in ("user_id", "item_id", "row_id"):  # raw values, in input order, type kept (no float round trip)
        assert part.column(name).type == table.column(name).type
        assert part.column(name).to_pylist() == table.column(name).to_pylist()
    # the same rows with their labels score the same; --split all scores them through the training reader
    labelled = str(scored["tmp"] / "labelled-out")
    assert predict(scored, labelled, scored["labelled"], extra=["--keep-columns", "row_id", "--metrics"]) == 0
    with_labels = pq.read_table(os.path.join(labelled, "part-00000.parquet"))
    everything = scored["all"]
    position = {int(r): i for i, r in enumerate(everything.column("row_id").to_numpy())}
    at = np.array([position[int(r)] for r in part.column("row_id").to_numpy()])
    for task in ("ctr", "stay", "cvr"):
        got = part.column(f"score_{task}").to_numpy()
        assert got.dtype == np.float32 and np.ptp(got) > 0
        np.testing.assert_array_equal(got, with_labels.column(f"score_{task}").to_numpy())
        np.testing.assert_allclose(got, everything.column(f"score_{task}").to_numpy()[at], rtol=0, atol=1e-6)
    # labelled files may still report metrics: AUC of the written scores against the file's labels
    summary = json.load(open(os.path.join(labelled, "predict.json")))
    assert summary["rows"] == table.num_rows and summary["parts"] == ["part-00000.parquet"]
    clicks = table.column("click").to_numpy().astype(np.float32)
    expected = auc(with_labels.column("score_ctr").to_numpy().astype(np.float64), clicks)
    assert summary["metrics"]["ctr/auc"] == pytest.approx(expected, abs=1e-9)
    assert "metrics" not in json.load(open(os.path.join(out, "predict.json")))


def test_unseen_ids_score_through_their_out_of_vocabulary_rows(scored):
    table = pq.read_table(scored["unlabelled"]).slice(0, 400)
    seen_users = table.column("user_id").to_numpy()
    inputs = {}
    for name, base in (("a", 10**12), ("b", 2 * 10**12)):  # two different sets of ids training never saw
        unseen = table.set_column(table.column_names.index("user_id"), "user_id",
                                  pa.array(base + np.arange(table.num_rows), pa.int64()))
        unseen = unseen.set_column(unseen.column_names.index("item_id"), "item_id",
                                   pa.array(base + np.arange(table.num_rows), pa.int64()))
        inputs[name] = str(scored["tmp"] / f"unseen-{name}.parquet")
        pq.write_table(unseen, inputs[name])
    parts = {}
    for name, path in inputs.items():
        out = str(scored["tmp"] / f"unseen-out-{name}")
        assert predict(scored, out, path, extra=["--keep-columns", "user_id", "--emit-indices"]) == 0
        parts[name] = pq.read_table(os.path.join(out, "part-00000.parquet"))
    a, b = parts["a"], parts["b"]
    assert (a.column("user").to_numpy() == 0).all()  # the user vocabulary's OOV row
    assert a.column("user_id").to_pylist() == (10**12 + np.arange(table.num_rows)).tolist()
    np.testing.assert_array_equal(a.column("score_ctr").to_numpy(), b.column("score_ctr").to_numpy())
    seen = str(scored["tmp"] / "seen-out")
    assert predict(scored, seen, scored["unlabelled"], extra=["--emit-indices"]) == 0
    seen_part = pq.read_table(os.path.join(seen, "part-00000.parquet")).slice(0, 400)
    assert (seen_part.column("user").to_numpy() > 0).all() and len(np.unique(seen_users)) > 10
    assert not np.array_equal(seen_part.column("score_ctr").to_numpy(), a.column("score_ctr").to_numpy())


def test_a_rerun_skips_complete_parts_and_refuses_parts_of_another_job(scored, capsys):
    out = str(scored["tmp"] / "resume-out")
    assert predict(scored, out, scored["unlabelled"], extra=["--keep-columns", KEEP]) == 0
    part = os.path.join(out, "part-00000.parquet")
    before = os.stat(part).st_mtime_ns, pq.read_table(part)
    os.remove(os.path.join(out, "predict.json"))
    assert predict(scored, out, scored["unlabelled"], extra=["--keep-columns", KEEP]) == 0
    assert os.stat(part).st_mtime_ns == before[0]  # not written again
    assert json.load(open(os.path.join(out, "predict.json")))["skipped"] == ["part-00000.parquet"]
    capsys.readouterr()
    assert predict(scored, out, scored["unlabelled"], extra=["--keep-columns", "user_id"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {part}: a part of another scoring job"), err
    assert predict(scored, out, scored["unlabelled"], extra=["--keep-columns", "user_id", "--overwrite"]) == 0
    assert pq.read_table(part).column_names == ["user_id", "score_ctr", "score_stay", "score_cvr"]
    assert not [f for f in os.listdir(out) if ".tmp." in f]


def test_two_ranks_write_one_part_each_and_a_rerun_scores_only_the_missing_one(scored):
    out = str(scored["tmp"] / "two-ranks")
    args = ["predict", "--run-dir", scored["run"], "--input", scored["unlabelled"], scored["labelled"],
            "--out", out, "--keep-columns", "row_id"]
    torchrun(args, nproc=2)
    assert sorted(os.listdir(out)) == ["part-00000.parquet", "part-00001.parquet", "predict.json"]
    parts = [pq.read_table(os.path.join(out, f"part-0000{r}.parquet")) for r in range(2)]
    n = scored["table"].num_rows
    assert [p.num_rows for p in parts] == [n, n]  # two files of n rows: rank 0 the first, rank 1 the second
    one = str(scored["tmp"] / "one-rank")
    assert predict(scored, one, scored["unlabelled"], scored["labelled"], extra=["--keep-columns", "row_id"]) == 0
    single = pq.read_table(os.path.join(one, "part-00000.parquet"))
    both = pa.concat_tables(parts)
    assert both.column("row_id").to_pylist() == single.column("row_id").to_pylist()
    np.testing.assert_allclose(both.column("score_ctr").to_numpy(), single.column("score_ctr").to_numpy(),
                               rtol=0, atol=1e-6)
    first = os.path.join(out, "part-00000.parquet")
    stamp = os.stat(first).st_mtime_ns
    os.remove(os.path.join(out, "part-00001.parquet"))
    torchrun(args, nproc=2)
    assert os.stat(first).st_mtime_ns == stamp
    again = pq.read_table(os.path.join(out, "part-00001.parquet"))
    assert again.equals(parts[1])
    assert json.load(open(os.path.join(out, "predict.json")))["skipped"] == ["part-00000.parquet"]


def write_csv(table: pa.Table, path: str, tenure_days=None) -> str:
    """``table`` as CSV text (multi-hot cells joined with '|'), with some ``tenure_days`` cells replaced."""
    values = pc.cast(table.column("tenure_days"), pa.string()).to_pylist()
    for row, value in (tenure_days or {}).items():
        values[row] = value
    text = table.set_column(table.column_names.index("tenure_days"), "tenure_days", pa.array(values))
    text = text.drop_columns(["user_interests"]).append_column(
        "user_interests", pa.array(["|".join(map(str, v)) for v in table.column("user_interests").to_pylist()]))
    pa_csv.write_csv(text, path)
    return path


def test_csv_rows_score_as_the_same_parquet_rows_and_keep_their_text(scored):
    table = pq.read_table(scored["unlabelled"]).slice(0, 300)
    parquet, csv = str(scored["tmp"] / "rows.parquet"), write_csv(table, str(scored["tmp"] / "rows.csv"))
    pq.write_table(table, parquet)
    parts = {}
    for path in (parquet, csv):
        out = str(scored["tmp"] / f"csv-out-{os.path.basename(path)}")
        assert predict(scored, out, path, extra=["--keep-columns", "user_id"]) == 0
        parts[path] = pq.read_table(os.path.join(out, "part-00000.parquet"))
    assert parts[csv].column("user_id").to_pylist() == [str(u) for u in table.column("user_id").to_pylist()]
    np.testing.assert_allclose(parts[csv].column("score_ctr").to_numpy(),
                               parts[parquet].column("score_ctr").to_numpy(), rtol=0, atol=1e-6)


def test_bad_input_is_one_line_naming_file_column_and_row_and_writes_nothing(scored, capsys):
    table = pq.read_table(scored["unlabelled"]).slice(0, 50)
    missing = str(scored["tmp"] / "missing.parquet")
    pq.write_table(table.drop_columns(["item_price"]), missing)
    bad_value = write_csv(table, str(scored["tmp"] / "bad.csv"), {6: "twelve"})
    for path, needle in ((missing, "column 'item_price'"), (bad_value, "row 7")):
        out = str(scored["tmp"] / f"bad-out-{os.path.basename(path)}")
        capsys.readouterr()
        assert predict(scored, out, path, extra=["--keep-columns", "user_id"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and path in err[0] and needle in err[0], err
        assert not os.path.exists(os.path.join(out, "part-00000.parquet"))
    capsys.readouterr()
    assert predict(scored, str(scored["tmp"] / "x"), scored["unlabelled"], extra=["--keep-columns", "nope"]) == 2
    assert "column 'nope'" in capsys.readouterr().err
    assert main(["predict", "--run-dir", scored["run"], "--input", scored["unlabelled"], "--split", "test",
                 "--out", str(scored["tmp"] / "y")]) == 2
