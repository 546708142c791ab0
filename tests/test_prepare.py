"""`recsys prepare movielens-100k|movielens-1m PATH`: checks a downloaded archive or folder without network
access, says in one line which files are missing, and writes a run config that trains on it."""

import json
import os
import zipfile

import fixtures_public as fx
import pytest

from recsys.cli import main
from recsys.config import load_config, read_yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["data.batch_size=32", "train.epochs=1", "train.max_steps=2", "train.progress=false", "tensorboard=false"]
WRITERS = {"movielens-100k": (fx.write_movielens_100k, "ml-100k"), "movielens-1m": (fx.write_movielens_1m, "ml-1m")}


def sets(items):
    return [x for item in items for x in ("--set", item)]


@pytest.mark.parametrize("name", list(WRITERS))
def test_prepare_writes_a_config_that_trains_on_the_extracted_folder(name, tmp_path, capsys, caplog):
    writer, folder = WRITERS[name]
    rows = writer(str(tmp_path / "downloads" / folder))
    out = tmp_path / "conf" / f"{name}.yaml"
    with caplog.at_level("INFO", logger="recsys"):
        assert main(["prepare", name, str(tmp_path / "downloads"), "--out", str(out)]) == 0, capsys.readouterr().err
    assert f"{rows['ratings']} ratings; wrote {out}" in caplog.text
    cfg = load_config(str(out))
    assert cfg.data.path == str(tmp_path / "downloads" / folder)
    assert cfg.data.spec == os.path.join(REPO, "configs", "datasets", f"{name}.yaml")
    assert cfg.run_dir == str(tmp_path / "conf" / "runs" / name)  # relative to the written config
    assert main(["train", "-c", str(out)] + sets(FAST)) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "conf" / "runs" / name / "metrics.json").read_text())["steps"] == 2


def test_prepare_extracts_a_downloaded_zip_next_to_itself(tmp_path, capsys):
    fx.write_movielens_100k(str(tmp_path / "src" / "ml-100k"))
    archive = tmp_path / "dl" / "ml-100k.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as z:
        for f in ("u.data", "u.user", "u.item"):
            z.write(tmp_path / "src" / "ml-100k" / f, f"ml-100k/{f}")
    assert main(["prepare", "movielens-100k", str(archive), "--out", str(tmp_path / "c.yaml")]) == 0
    assert read_yaml(str(tmp_path / "c.yaml"))["data"]["path"] == str(tmp_path / "dl" / "ml-100k")


def test_missing_files_wrong_layout_and_an_existing_config_are_one_line_each(tmp_path, capsys):
    fx.write_movielens_1m(str(tmp_path / "ml-1m"))
    os.remove(tmp_path / "ml-1m" / "movies.dat")
    fx.write_movielens_1m(str(tmp_path / "pipes"))
    cases = [
        (["movielens-1m", str(tmp_path / "ml-1m")], f"{tmp_path / 'ml-1m'}: not a MovieLens-1M folder: missing "
                                                    "movies.dat (download https://files.grouplens.org/datasets/"
                                                    "movielens/ml-1m.zip and extract it)"),
        (["movielens-100k", str(tmp_path / "ml-1m")], "not a MovieLens-100K folder: missing u.data, u.user, u.item"),
        (["movielens-1m", str(tmp_path / "nowhere")], "no such folder"),
    ]
    (tmp_path / "pipes" / "movies.dat").write_text("1|Toy Story (1995)|Animation\n")
    cases.append((["movielens-1m", str(tmp_path / "pipes")],
                  f"{tmp_path / 'pipes' / 'movies.dat'}, row 1: expected 3 fields separated by '::'"))
    (tmp_path / "taken.yaml").write_text("keep me\n")
    fx.write_movielens_1m(str(tmp_path / "ok"))
    cases.append((["movielens-1m", str(tmp_path / "ok"), "--out", str(tmp_path / "taken.yaml")],
                  "taken.yaml: exists (give --overwrite"))
    for args, says in cases:
        rc = main(["prepare"] + args + (["--out", str(tmp_path / "new.yaml")] if "--out" not in args else []))
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and says in err, (args, err)
    assert not (tmp_path / "new.yaml").exists() and (tmp_path / "taken.yaml").read_text() == "keep me\n"


def test_the_shipped_movielens_specs_point_at_no_development_copy():
    for name in ("movielens-100k", "movielens-1m"):
        root = read_yaml(os.path.join(REPO, "configs", "datasets", f"{name}.yaml"))["root"]
        assert "shared" not in root and root.startswith("../../data/"), root
