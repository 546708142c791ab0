"""The public API: every exported name resolves lazily and is typed for checkers, and the README's "Without
YAML" example trains, evaluates from its run folder and refuses bad values built in code like a file's."""

import ast
import json
import os
import re
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO

import recsys
from recsys.cli import main
from recsys.errors import ConfigError


def test_every_export_resolves_and_is_what_type_checkers_see():
    tree = ast.parse(open(os.path.join(REPO, "recsys", "__init__.py")).read())
    checked = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for imp in node.body:
                checked.update({alias.name: imp.module for alias in imp.names})
    assert checked == recsys._MODULE_OF  # the lazy table and the typed imports name the same objects
    for name in recsys.__all__:
        obj = getattr(recsys, name)
        assert obj.__module__ == checked[name], name
    with pytest.raises(AttributeError, match="no attribute 'Trainr'"):
        getattr(recsys, "Trainr")  # noqa: B009 - the module's __getattr__ is what is tested


def test_import_recsys_stays_cheap():
    code = "import sys, recsys; recsys.DatasetSpec; recsys.Config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False"


def _clicks(folder, n=3000, seed=0):
    rng = np.random.default_rng(seed)
    user, item = rng.integers(0, 200, n), rng.integers(0, 100, n)
    price = rng.lognormal(2.0, 1.0, n)
    p = 1 / (1 + np.exp(-(np.sin(user) + np.cos(item) - 0.2 * np.log1p(price))))
    os.makedirs(folder, exist_ok=True)
    pq.write_table(pa.table({"user_id": user, "item_id": item, "price": price,
                             "click": (rng.random(n) < p).astype(np.int64)}), os.path.join(folder, "clicks.parquet"))


def _readme_code() -> str:
    text = open(os.path.join(REPO, "README.md")).read()
    section = text.split("**Without YAML**", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_without_yaml_example_trains_and_its_run_folder_evaluates(tmp_path, monkeypatch, capsys):
    _clicks(str(tmp_path / "data" / "clicks"))
    code = _readme_code()
    assert "recsys.DatasetSpec(" in code and "recsys.Config(" in code and ".yaml" not in code
    code = code.replace("recsys.TrainConfig(epochs=2)", "recsys.TrainConfig(epochs=2, progress=False)")
    monkeypatch.chdir(tmp_path)  # the example's relative paths (data/clicks, runs/clicks) are the user's cwd
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    auc = float(capsys.readouterr().out.split()[-1])
    assert 0.55 < auc < 1.0
    run = tmp_path / "runs" / "clicks"
    assert (run / "config.yaml").is_file() and (run / "spec.yaml").is_file()
    monkeypatch.chdir(REPO)
    out = tmp_path / "eval.json"
    assert main(["eval", "--run-dir", str(run), "--out", str(out)]) == 0
    assert abs(float(json.load(open(out))["click/auc"]) - auc) < 1e-9


@pytest.mark.parametrize("edit, key", [
    (lambda cfg: setattr(cfg.data, "batch_size", 0), "data.batch_size"),
    (lambda cfg: setattr(cfg.train, "epochs", -1), "train.epochs"),
    (lambda cfg: setattr(cfg.model, "embedding_dim", float("nan")), "model.embedding_dim"),
    (lambda cfg: setattr(cfg, "device", "tpu"), "device"),
])
def test_a_config_built_in_code_is_refused_like_a_file(tmp_path, edit, key):
    cfg = recsys.Config(model=recsys.ModelConfig(name="wide_deep"), run_dir=str(tmp_path / "run"))
    edit(cfg)
    with pytest.raises(ConfigError) as e:
        recsys.Trainer(cfg, dataset=None)
    assert key in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()


def test_a_spec_built_in_code_is_checked(tmp_path):
    cfg = recsys.Config(run_dir=str(tmp_path / "run"))
    spec = recsys.DatasetSpec(name="x", source=recsys.FileSpec(path="a.parquet"), sparse=[], tasks=[])
    with pytest.raises(ConfigError, match="at least one sparse feature"):
        recsys.Dataset.from_config(cfg, spec=spec)


def test_a_model_option_typo_built_in_code_names_the_key(tmp_path, monkeypatch):
    _clicks(str(tmp_path / "data" / "clicks"), n=500)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    code = _readme_code().split("trainer = ")[0].replace('{"hidden": [64, 32]}', '{"hiden": [64, 32]}')
    exec(compile(code, "README.md", "exec"), namespace)
    cfg, spec = namespace["cfg"], namespace["spec"]
    with pytest.raises(ConfigError, match="model.params.hiden.*did you mean 'hidden'"):
        recsys.Trainer(cfg, dataset=recsys.Dataset.from_config(cfg, spec=spec))
    assert not (tmp_path / "runs" / "clicks").exists()
