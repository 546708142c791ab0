"""What real files need from a dataset spec: overrides of any spec key (config file and command line), file sets
per split, row filters, time columns of dates and formats, multi-character delimiters, and embedding widths
FBGEMM cannot take directly."""

import io
import json
import os

import fixtures_public as fx
import numpy as np
import pyarrow as pa
import pytest
import torch
import yaml
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.cli import main
from recsys.config import SplitConfig, load_config
from recsys.data.dataset import Dataset
from recsys.data.derived import filter_mask
from recsys.data.encoding import Where
from recsys.data.reader import FIELD_BREAK, DelimiterStream
from recsys.data.spec import FilterSpec, load_spec
from recsys.errors import DataError
from recsys.modules.sparse import SparseArch
from recsys.schema import Schema, SparseFeature, Task

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALICCP_RUN = os.path.join(REPO, "configs", "esmm_aliccp.yaml")
FAST = ["data.batch_size=64", "train.epochs=1", "train.max_steps=2", "train.progress=false", "tensorboard=false"]


def sets(*items):
    return [x for item in items for x in ("--set", item)]


def write(path, text: str) -> str:
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return str(path)


# --- overrides of spec keys -------------------------------------------------------------------------------
def test_set_changes_any_spec_key_paths_relative_to_the_working_directory(tmp_path, monkeypatch, capsys):
    rows = fx.write_aliccp(str(tmp_path / "data"))
    os.rename(tmp_path / "data" / "ali_ccp_train_sample.csv", tmp_path / "mine.csv")  # a name the spec does not know
    monkeypatch.chdir(tmp_path)
    rc = main(["train", "-c", ALICCP_RUN, "--data", "data", "--run-dir", "run"]
              + sets("data.spec.sources.train.path=mine.csv", "data.spec.sparse.f101.embedding_dim=5",
                     "data.spec.tasks.cvr.weight=2", *FAST))
    assert rc == 0, capsys.readouterr().err
    spec = yaml.safe_load((tmp_path / "run" / "spec.yaml").read_text())
    assert spec["sources"]["train"]["path"] == str(tmp_path / "mine.csv")
    assert spec["sparse"][0] == {**spec["sparse"][0], "name": "f101", "embedding_dim": 5}
    assert spec["tasks"][1]["weight"] == 2.0
    saved = load_config(str(tmp_path / "run" / "config.yaml"))
    assert saved.data.spec_overrides == {}  # the run's spec.yaml already holds them
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["valid"]["rows"] == rows["val"] and metrics["test"]["rows"] == rows["test"]


def test_spec_override_of_an_unknown_entry_or_key_is_one_line(tmp_path, capsys):
    fx.write_aliccp(str(tmp_path / "data"))
    for item, says in (("data.spec.sparse.f999.embedding_dim=8", "data.spec.sparse.f999: no such entry (entries: f101"),
                       ("data.spec.sources.trian.path=x.csv", "unknown key 'sources.trian'; did you mean 'train'?")):
        rc = main(["train", "-c", ALICCP_RUN, "--data", str(tmp_path / "data"), "--run-dir", str(tmp_path / "run"),
                   "--set", item])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and says in err, err
        assert not (tmp_path / "run").exists()


def test_overrides_address_list_entries_by_name_or_index():
    spec = os.path.join(REPO, "configs", "datasets", "kuairand.yaml")
    changed = load_spec(spec, {"filter": {"0": {"in": [0, 1]}}, "dense": {"0": {"fill": 1.5}},
                               "tasks": {"like": {"weight": 0.5}}})
    assert [(f.column, f.is_in) for f in changed.filter] == [("tab", [0, 1])]
    assert changed.dense[0].fill == 1.5 and [t.weight for t in changed.tasks] == [1.0, 1.0, 0.5]
    replaced = load_spec(spec, {"filter": {"column": "tab", "not_in": [3]}})
    assert [(f.column, f.is_in, f.not_in) for f in replaced.filter] == [("tab", None, [3])]


def test_paths_in_a_config_file_are_relative_to_it_run_dir_and_spec_overrides_included(tmp_path):
    spec = os.path.join(REPO, "configs", "datasets", "aliccp.yaml")
    path = write(tmp_path / "conf" / "run.yaml", f"data:\n  spec: {spec}\n  path: ../data\n"
                 "  spec_overrides: {sources: {valid: {path: held_out/val.csv}}}\nrun_dir: runs/a\n")
    cfg = load_config(path)
    assert cfg.run_dir == str(tmp_path / "conf" / "runs" / "a")
    assert cfg.data.path == str(tmp_path / "data")
    assert cfg.data.spec_overrides["sources"]["valid"]["path"] == str(tmp_path / "conf" / "held_out" / "val.csv")
    assert load_config(path, ["run_dir=elsewhere"]).run_dir == os.path.join(os.getcwd(), "elsewhere")


# --- file sets per split ----------------------------------------------------------------------------------
SPEC = """name: t
sparse: [{name: u, group: user}]
tasks: [{name: y, kind: binary}]
time: day
"""


def write_rows(path, n, first_day, seed=0):
    rng = np.random.default_rng(seed)
    lines = ["u,y,day"] + [f"{int(rng.integers(0, 5))},{i % 2},2024-01-{first_day + i * 10 // n:02d}" for i in range(n)]
    return write(path, "\n".join(lines) + "\n")


def test_given_test_files_with_a_random_validation_share_of_train(tmp_path):
    write_rows(tmp_path / "train.csv", 200, 1)
    write_rows(tmp_path / "test.csv", 40, 20)
    spec = write(tmp_path / "s.yaml", SPEC + "sources: {train: {path: train.csv}, test: {path: test.csv}}\n")
    ds = Dataset(load_spec(spec), split=SplitConfig(valid=0.25, test=0.3, seed=1))
    ds.fit()
    counts = ds.split_counts
    assert counts["test"] == 40 and counts["train"] + counts["valid"] == 200 and 30 <= counts["valid"] <= 70


def test_given_validation_files_with_a_time_based_test_share_of_train(tmp_path):
    write_rows(tmp_path / "train.csv", 200, 1)
    write_rows(tmp_path / "val.csv", 30, 15)
    spec = write(tmp_path / "s.yaml", SPEC + "sources: {train: {path: train.csv}, valid: {path: val.csv}}\n")
    ds = Dataset(load_spec(spec), split=SplitConfig(kind="time", valid=0.3, test=0.2))
    ds.fit()
    parts = ds.read()
    assert len(parts["valid"]) == 30 and len(parts["train"]) + len(parts["test"]) == 200
    assert parts["train"].time.max() < parts["test"].time.min()  # test: the latest days of train.csv
    assert ds.test_from == np.quantile(parts["train"].time.tolist() + parts["test"].time.tolist(), 0.8)


def test_every_split_given_as_files_and_source_or_sources_train_but_not_both(tmp_path):
    for name, n in (("a.csv", 50), ("b.csv", 20), ("c.csv", 10)):
        write_rows(tmp_path / name, n, 1)
    spec = write(tmp_path / "s.yaml", SPEC + "sources: {train: {path: a.csv}, valid: {path: b.csv}, "
                                             "test: {path: c.csv}}\n")
    ds = Dataset(load_spec(spec), split=SplitConfig(kind="time", valid=0.3, test=0.3))
    ds.fit()  # no cut points to fit: the main files are all training rows
    assert ds.split_counts == {"train": 50, "valid": 20, "test": 10}
    both = write(tmp_path / "bad.yaml", SPEC + "source: {path: a.csv}\nsources: {train: {path: a.csv}}\n")
    with pytest.raises(Exception, match="exactly one of 'source' or 'sources.train'"):
        load_spec(both)


# --- row filters --------------------------------------------------------------------------------------------
def test_filter_conditions_on_numbers_text_and_missing_values():
    table = pa.table({"tab": pa.array(["0", "3", None, "6", "4"]), "name": pa.array(["a", "b", "c", None, "b"])})
    where = Where("f.csv", 0)

    def keep(**conditions):
        return filter_mask(FilterSpec(**conditions), table, where).tolist()

    assert keep(column="tab", is_in=[0, 1, 2, 4, 6]) == [True, False, False, True, True]
    assert keep(column="tab", not_in=[0, 6]) == [False, True, True, False, True]
    assert keep(column="tab", gt=0, le=4) == [False, True, False, False, True]
    assert keep(column="tab", ne=3) == [True, False, True, True, True]
    assert keep(column="name", eq="b") == [False, True, False, False, True]
    assert keep(column="name", not_null=True) == [True, True, True, False, True]
    bad = pa.table({"tab": pa.array(["0", "x"])})
    with pytest.raises(DataError, match=r"f.csv, column 'tab', row 2: expected a number, got 'x'"):
        filter_mask(FilterSpec(column="tab", ge=1), bad, where)


def test_filtered_rows_change_no_other_rows_split_and_errors_name_file_rows(tmp_path):
    lines = ["u,y,tab"] + [f"{i % 7},{i % 2},{i % 3}" for i in range(300)]
    write(tmp_path / "d.csv", "\n".join(lines) + "\n")
    base = "name: t\nsource: {path: d.csv}\nsparse: [{name: u, group: user}]\ntasks: [{name: y, kind: binary}]\n"
    split = SplitConfig(valid=0.2, test=0.2, seed=3)
    full = Dataset(load_spec(write(tmp_path / "a.yaml", base)), split=split)
    kept = Dataset(load_spec(write(tmp_path / "b.yaml", base + "filter: {column: tab, ne: 1}\n")), split=split)
    for ds in (full, kept):
        ds.fit()
    a, b = full.read(), kept.read()
    for name in ("train", "valid", "test"):
        ids = a[name].row_id[np.asarray(a[name].row_id) % 3 != 1]
        assert np.array_equal(np.sort(ids), np.sort(b[name].row_id))
    assert kept.filtered_out == {None: 100}
    lines[200] = "1,7,2"  # a label the kept row may not have, in file row 200
    write(tmp_path / "d.csv", "\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"d.csv, column 'y', row 200:"):
        Dataset(load_spec(str(tmp_path / "b.yaml")), split=split).fit()


# --- time columns -------------------------------------------------------------------------------------------
def time_spec(tmp_path, cells, extra=""):
    write(tmp_path / "t.csv", "u,y,join_time\n" + "".join(f"{i % 3},{i % 2},{c}\n" for i, c in enumerate(cells)))
    return load_spec(write(tmp_path / "t.yaml", "name: t\nsource: {path: t.csv}\nsparse: [{name: u}]\n"
                           "tasks: [{name: y}]\ntime: join_time\n" + extra))


def test_dates_datetimes_and_formats_as_time_columns_with_date_cut_points(tmp_path):
    days = [f"2007-07-{d:02d}" for d in range(1, 31)]  # Douban's join_time
    ds = Dataset(time_spec(tmp_path, days), split=SplitConfig(kind="time", valid=0.0, test=0.0,
                                                              valid_from="2007-07-21", test_from="2007-07-26"))
    ds.fit()
    assert ds.split_counts == {"train": 20, "valid": 5, "test": 5}
    cfg = load_config(write(tmp_path / "c.yaml", "data: {split: {kind: time, test_from: 2007-07-26}}\n"))
    assert cfg.data.split.test_from == "2007-07-26"  # YAML's date, unquoted, is kept as the date text
    formatted = [f"{d:02d}/07/2007 18:30" for d in range(1, 31)]
    ds = Dataset(time_spec(tmp_path, formatted, 'time_format: "%d/%m/%Y %H:%M"\n'),
                 split=SplitConfig(kind="time", valid=0.0, test=0.0, test_from="2007-07-26T00:00"))
    ds.fit()
    assert ds.split_counts == {"train": 25, "valid": 0, "test": 5}
    t = ds.read()["train"].time
    assert sorted(t)[0] == 1183314600.0  # 2007-07-01 18:30, naive: taken as written
    offset = ["2024-05-01T12:00:00+02:00"] * 4
    ds = Dataset(time_spec(tmp_path, offset), split=SplitConfig(valid=0.0, test=0.0))
    ds.fit()
    assert ds.read()["train"].time.tolist() == [1714557600.0] * 4  # 10:00 UTC


def test_a_time_not_matching_its_format_names_file_column_and_row(tmp_path):
    cells = ["01/07/2007 18:30", "02/07/2007 18:30", "2007-07-03"]
    ds = Dataset(time_spec(tmp_path, cells, 'time_format: "%d/%m/%Y %H:%M"\n'), split=SplitConfig())
    with pytest.raises(DataError, match=r"t.csv, column 'join_time', row 3: time '2007-07-03' does not match "
                                        r"time_format '%d/%m/%Y %H:%M'"):
        ds.fit()


# --- multi-character delimiters -----------------------------------------------------------------------------
@pytest.mark.parametrize("block", [1, 2, 3, 7, 1 << 20])
def test_a_longer_delimiter_is_found_across_block_boundaries(tmp_path, block):
    text = "1::Caf::e::3\n22::b:c::::\n"
    write(tmp_path / "x.dat", text)
    out = io.BufferedReader(DelimiterStream(str(tmp_path / "x.dat"), b"::", block=block)).read()
    assert out == text.replace("::", FIELD_BREAK).encode()


# --- embedding widths ---------------------------------------------------------------------------------------
def test_a_width_fbgemm_cannot_take_is_padded_and_the_model_sees_its_own_width():
    schema = Schema(sparse=(SparseFeature("u", 10, embedding_dim=5, group="user"), SparseFeature("i", 6)),
                    tasks=(Task("y"),))
    arch = SparseArch(schema, init_scale=0.1, device=torch.device("cpu"))
    weights = {n: t.weight for n, t in arch.ebc.embedding_bags.items()}
    assert {n: tuple(w.shape) for n, w in weights.items()} == {"u": (10, 8), "i": (6, 16)}
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=["u", "i"], values=torch.tensor([3, 7, 1, 2]),
                                              lengths=torch.tensor([1, 1, 1, 1]))
    emb = arch(kjt)
    assert tuple(emb.features["u"].shape) == (2, 5) and tuple(emb.features["i"].shape) == (2, 16)
    assert torch.equal(emb.features["u"], weights["u"][[3, 7], :5])
    emb.features["u"].sum().backward()
    grad = weights["u"].grad
    assert torch.all(grad[[3, 7], :5] == 1) and torch.count_nonzero(grad[:, 5:]) == 0
    assert arch.output_dim(["u", "i"]) == 21  # the width of the concatenated embeddings models size layers by


def test_a_config_with_embedding_dim_5_trains(tmp_path, capsys):
    fx.write_tenrec(str(tmp_path / "data"))
    rc = main(["train", "-c", os.path.join(REPO, "configs", "tenrec.yaml"), "--data", str(tmp_path / "data"),
               "--run-dir", str(tmp_path / "run")] + sets("model.embedding_dim=5", *FAST))
    assert rc == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"] == 2
