"""Bad input through the CLI: a one-line error naming file, column and row, exit code 2, nothing written."""

import os
import textwrap

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.cli import main

GOOD_ROWS = [
    "user,item,tags,price,click,scene",
    "a,1,x|y,1.5,1,s1",
    "b,2,y,2.0,0,s2",
    "c,3,,0.5,1,s1",
    "a,2,x,3.0,0,s1",
]
SPEC = """
name: tiny
root: .
source: {{path: {file}, delimiter: "{delimiter}"}}
sparse:
  - {{name: user, group: user, oov: {oov}}}
  - {{name: item, group: item, encoding: identity, num_embeddings: 5}}
  - {{name: tags, multi_hot: true, dtype: {tags_dtype}}}
dense:
  - {{name: price}}
tasks:
  - {{name: ctr, column: click}}
scenario: {{column: scene, values: [s1, s2]}}
user: user
"""
CONFIG = """
data: {{spec: spec.yaml, batch_size: 4, split: {{valid: 0.0, test: 0.0}}}}
model: {{name: {model}, embedding_dim: 4}}
train: {{epochs: 1, progress: false}}
tensorboard: false
run_dir: {run_dir}
"""


def setup(tmp_path, rows=None, file="data.csv", delimiter=",", oov="bucket", tags_dtype="auto", model="wide_deep",
          raw=None):
    data = tmp_path / file
    if raw is not None:
        data.write_bytes(raw)
    else:
        data.write_text("\n".join(rows if rows is not None else GOOD_ROWS) + "\n")
    (tmp_path / "spec.yaml").write_text(textwrap.dedent(
        SPEC.format(file=file, delimiter=delimiter, oov=oov, tags_dtype=tags_dtype)))
    run_dir = tmp_path / "run"
    (tmp_path / "config.yaml").write_text(CONFIG.format(model=model, run_dir=run_dir))
    return str(tmp_path / "config.yaml"), str(data), run_dir


def fails(capsys, argv, *expected):
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("error: ") and "\n" not in err, err
    for e in expected:
        assert e in err, err
    assert "Traceback" not in err
    return err


def no_output(run_dir) -> bool:
    return not os.path.exists(run_dir) or not os.listdir(run_dir)


def test_good_input_trains(tmp_path, capsys):
    cfg, _, run_dir = setup(tmp_path)
    assert main(["train", "-c", cfg]) == 0
    assert os.path.exists(run_dir / "metrics.json")


def test_missing_column(tmp_path, capsys):
    rows = [",".join(r.split(",")[:3] + r.split(",")[4:]) for r in GOOD_ROWS]  # drop price
    cfg, data, run_dir = setup(tmp_path, rows)
    fails(capsys, ["train", "-c", cfg], data, "column 'price'", "missing column")
    assert no_output(run_dir)


def test_wrong_type_names_row(tmp_path, capsys):
    rows = list(GOOD_ROWS)
    rows[3] = "c,3,,cheap,1,s1"
    cfg, data, run_dir = setup(tmp_path, rows)
    fails(capsys, ["train", "-c", cfg], data, "column 'price'", "row 3", "'cheap'")
    assert no_output(run_dir)


def test_nan_label(tmp_path, capsys):
    rows = list(GOOD_ROWS)
    rows[2] = "b,2,y,2.0,,s2"
    cfg, data, run_dir = setup(tmp_path, rows)
    fails(capsys, ["train", "-c", cfg], data, "column 'click'", "row 2", "missing")
    assert no_output(run_dir)


def test_binary_label_outside_domain(tmp_path, capsys):
    rows = list(GOOD_ROWS)
    rows[4] = "a,2,x,3.0,2,s1"
    cfg, data, run_dir = setup(tmp_path, rows)
    fails(capsys, ["train", "-c", cfg], data, "column 'click'", "row 4", "must be 0 or 1")
    assert no_output(run_dir)


@pytest.mark.parametrize("content,message", [(b"", "empty file"), (b"user,item,tags,price,click,scene\n", "empty file")])
def test_empty_file(tmp_path, capsys, content, message):
    cfg, data, run_dir = setup(tmp_path, raw=content)
    fails(capsys, ["train", "-c", cfg], data, message)
    assert no_output(run_dir)


@pytest.mark.parametrize("bad_id,row", [("-1", 2), ("5", 3)])
def test_identity_id_out_of_range(tmp_path, capsys, bad_id, row):
    rows = list(GOOD_ROWS)
    parts = rows[row].split(",")
    parts[1] = bad_id
    rows[row] = ",".join(parts)
    cfg, data, run_dir = setup(tmp_path, rows)
    fails(capsys, ["train", "-c", cfg], data, "column 'item'", f"row {row}", f"id {bad_id} is outside [0, 5)")
    assert no_output(run_dir)


def test_unseen_value_under_oov_error(tmp_path, capsys):
    rows = GOOD_ROWS + [f"u{i},1,x,1.0,{i % 2},s1" for i in range(40)]
    cfg, data, run_dir = setup(tmp_path, rows, oov="error")
    with open(cfg, "a") as f:  # hold out rows so valid/test contain users the vocabulary never saw
        f.write("\n")
    text = open(cfg).read().replace("split: {valid: 0.0, test: 0.0}", "split: {valid: 0.3, test: 0.3, seed: 1}")
    open(cfg, "w").write(text)
    fails(capsys, ["train", "-c", cfg], data, "column 'user'", "not in the fitted vocabulary", "row ")
    assert no_output(run_dir)


def test_undeclared_scenario(tmp_path, capsys):
    rows = list(GOOD_ROWS)
    rows[2] = "b,2,y,2.0,0,s9"
    cfg, data, run_dir = setup(tmp_path, rows)
    fails(capsys, ["train", "-c", cfg], data, "column 'scene'", "row 2", "'s9' is not declared")
    assert no_output(run_dir)


def test_wrong_delimiter_hint(tmp_path, capsys):
    rows = [r.replace(",", ";") for r in GOOD_ROWS]
    cfg, data, run_dir = setup(tmp_path, rows)
    fails(capsys, ["train", "-c", cfg], data, "is the delimiter ';'?")
    assert no_output(run_dir)


def test_malformed_csv_line(tmp_path, capsys):
    rows = list(GOOD_ROWS)
    rows[3] = "c,3,,0.5,1,s1,extra"
    cfg, data, run_dir = setup(tmp_path, rows)
    fails(capsys, ["train", "-c", cfg], data, "malformed CSV line", "expected 6 fields")
    assert no_output(run_dir)


def test_multi_hot_cell_that_does_not_parse(tmp_path, capsys):
    rows = ["user,item,tags,price,click,scene", "a,1,1|2,1.5,1,s1", "b,2,3|x,2.0,0,s2", "c,3,,0.5,1,s1"]
    cfg, data, run_dir = setup(tmp_path, rows, tags_dtype="int")
    fails(capsys, ["train", "-c", cfg], data, "column 'tags'", "row 2", "multi-hot cell does not parse")
    assert no_output(run_dir)


def test_corrupt_parquet(tmp_path, capsys):
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"user": ["a", "b"], "item": [1, 2], "tags": ["x", "y"], "price": [1.0, 2.0],
                             "click": [0, 1], "scene": ["s1", "s2"]}), good)
    raw = good.read_bytes()
    cfg, data, run_dir = setup(tmp_path, file="data.parquet", raw=raw[: len(raw) // 2])
    fails(capsys, ["train", "-c", cfg], data, "Parquet")
    assert no_output(run_dir)


def test_config_typo_and_bad_yaml(tmp_path, capsys):
    cfg, _, run_dir = setup(tmp_path)
    fails(capsys, ["train", "-c", cfg, "--set", "train.epoks=2"], "unknown key 'train.epoks'",
          "did you mean 'epochs'?")
    (tmp_path / "spec.yaml").write_text("name: x\nsource: {path: data.csv\n")
    fails(capsys, ["train", "-c", cfg], "spec.yaml", "invalid YAML")
    fails(capsys, ["train", "-c", str(tmp_path / "nope.yaml")], "nope.yaml: no such file")
    assert no_output(run_dir)


def test_unknown_model_is_refused_before_reading(tmp_path, capsys):
    cfg, _, run_dir = setup(tmp_path, model="os.system")
    fails(capsys, ["train", "-c", cfg], "unknown model 'os.system'")
    assert no_output(run_dir)
