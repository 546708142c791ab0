"""The README's Python API example runs as written (pointed at a tiny generated world)."""

import os
import re

from conftest import REPO


def test_readme_python_example_runs(tmp_path, tiny_world, monkeypatch, capsys):
    text = open(os.path.join(REPO, "README.md")).read()
    section = text.split("**Python API**", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "recsys.Trainer" in code and "recsys.build_model" in code
    code = code.replace("data/synthetic", tiny_world).replace("runs/api", str(tmp_path / "api"))
    code = code.replace('"train.epochs=1"', '"train.epochs=1", "data.batch_size=256", "train.progress=false"')
    monkeypatch.chdir(REPO)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    auc, oracle = (float(x) for x in capsys.readouterr().out.split())
    assert 0.5 < auc <= oracle <= 1.0
    assert namespace["model"].schema == namespace["trainer"].schema
