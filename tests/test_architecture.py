"""docs/architecture.md's example model is a composition of the shared blocks that trains as written.

The code block after ``<!-- example-model -->`` is run as a module; the model it registers lives only in a copy of
the registry for the test (the published registry and its index stay equal), and the real Trainer trains it under
TrainPipelineSparseDist (FX-traced like every registered model).
"""

import os
import re
import sys
import types

import numpy as np
import pytest
from conftest import REPO

from recsys.models import base
from recsys.modules.experts import MMoE
from recsys.modules.multitask import TaskTowers
from recsys.modules.sparse import FeatureInput


def example_code() -> str:
    text = open(os.path.join(REPO, "docs", "architecture.md")).read()
    return re.search(r"<!-- example-model -->\n```python\n(.*?)```", text, re.S).group(1)


@pytest.fixture
def example(monkeypatch) -> types.ModuleType:
    """The example run as the module ``architecture_example``, registered in a throw-away copy of the registry."""
    base.model_names()  # the published models register first, into the real registry
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    module = types.ModuleType("architecture_example")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(example_code(), "docs/architecture.md", "exec"), module.__dict__)
    return module


def test_the_example_is_short():
    lines = [line for line in example_code().splitlines() if line.strip()]
    body = [line for line in lines if not line.startswith(("from ", "import "))]
    assert len(body) <= 30, len(body)


def test_the_example_model_trains_with_the_trainer_under_the_pipeline(example, tiny_config):
    from recsys.train.trainer import Trainer

    params = "model.params={bottom: [32], num_experts: 2, expert_hidden: [16], tower: [8]}"
    trainer = Trainer(tiny_config(model="bottom_mmoe", extra=[params, "train.pipeline=sparse_dist",
                                                              "train.max_steps=4"]))
    model = trainer.model
    assert isinstance(model, example.BottomMMoE)
    assert isinstance(model.sparse_arch, FeatureInput) and isinstance(model.mmoe, MMoE)
    assert isinstance(model.towers, TaskTowers) and model.towers.tasks == trainer.schema.task_names
    assert model.bottom.hidden_dims == [32] and len(model.mmoe.experts) == 2
    result = trainer.fit()
    assert trainer.state.step == 4
    for task in trainer.schema.task_names:
        key = f"{task}/auc" if trainer.schema.task(task).kind == "binary" else f"{task}/rmse"
        assert np.isfinite(result["valid"][key]), key


def test_the_example_is_registered_only_for_the_test(example, monkeypatch):
    assert "bottom_mmoe" in base.model_names()
    monkeypatch.undo()  # what the fixture patched: the registry copy and the module
    assert "bottom_mmoe" not in base.model_names() and "architecture_example" not in sys.modules
