import pytest

from recsys.config import Config, ModelConfig, apply_overrides, from_dict, load_config, parse_yaml
from recsys.errors import ConfigError
from recsys.schema import Schema, SparseFeature, Task


def write(tmp_path, text: str) -> str:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return str(p)


def test_unknown_key_suggests_closest(tmp_path):
    path = write(tmp_path, "model:\n  embeding_dim: 8\n")
    with pytest.raises(ConfigError, match=r"unknown key 'model.embeding_dim'; did you mean 'embedding_dim'\?"):
        load_config(path)


def test_wrong_type_names_key(tmp_path):
    path = write(tmp_path, "train:\n  epochs: many\n")
    with pytest.raises(ConfigError, match=r"'train.epochs' must be int, got 'many'"):
        load_config(path)


def test_literal_suggestion():
    with pytest.raises(ConfigError, match="did you mean 'rowwise_adagrad'"):
        from_dict(Config, {"train": {"embedding_optimizer": {"name": "rowwise_adagard"}}})


def test_overrides_apply_and_are_typed(tmp_path):
    path = write(tmp_path, "train:\n  epochs: 3\n")
    cfg = load_config(path, ["train.epochs=5", "train.dense_optimizer.lr=1e-4", "model.params={hidden: [8]}"])
    assert cfg.train.epochs == 5
    assert cfg.train.dense_optimizer.lr == pytest.approx(1e-4)
    assert cfg.model.params == {"hidden": [8]}
    with pytest.raises(ConfigError, match="unknown key 'train.epoch'"):
        load_config(path, ["train.epoch=5"])
    with pytest.raises(ConfigError, match="not of the form key=value"):
        apply_overrides({}, ["train.epochs"])


def test_yaml12_booleans_keep_on_as_string():
    assert parse_yaml("on: user_id\nflag: true\nlr: 1e-3") == {"on": "user_id", "flag": True, "lr": 0.001}


def test_invalid_yaml_reports_file_and_line(tmp_path):
    path = write(tmp_path, "train:\n  epochs: [1,\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value).startswith(path) and "line" in str(e.value) and "\n" not in str(e.value)


def test_row_wise_refused_on_cpu(tmp_path):
    path = write(tmp_path, "sharding:\n  sharding_types: [row_wise]\n")
    with pytest.raises(ConfigError, match="need CUDA/NCCL"):
        load_config(path, ["device=cpu"])
    with pytest.raises(ConfigError, match="did you mean 'table_wise'"):
        load_config(path, ["device=cpu", "sharding.sharding_types=[table_wyse]"])


def test_split_fractions_checked(tmp_path):
    with pytest.raises(ConfigError, match="leave rows for training"):
        load_config(write(tmp_path, "data:\n  split: {valid: 0.5, test: 0.5}\n"))


def test_schema_validation():
    with pytest.raises(ConfigError, match="multiple of 4"):
        SparseFeature("a", 10, embedding_dim=6)
    with pytest.raises(ConfigError, match="depends_on 'clk' is not a task"):
        Schema(sparse=(SparseFeature("a", 10),), tasks=(Task("ctr"), Task("cvr", depends_on="clk")))
    with pytest.raises(ConfigError, match="repeat"):
        Schema(sparse=(SparseFeature("a", 10), SparseFeature("a", 10)))
    with pytest.raises(ConfigError, match="must be a binary task"):
        Schema(sparse=(SparseFeature("a", 10),), tasks=(Task("t", kind="regression"), Task("c", depends_on="t")))
    s = Schema(sparse=(SparseFeature("u", 10, group="user"), SparseFeature("i", 5, group="item")))
    assert [f.name for f in s.features_in(["user"])] == ["u"]


def test_model_params_checked_by_registry():
    from recsys.models import build_model

    schema = Schema(sparse=(SparseFeature("u", 10, 8),))
    with pytest.raises(ConfigError, match="unknown key 'model.params.hiden'; did you mean 'hidden'"):
        build_model(ModelConfig(name="wide_deep", params={"hiden": [8]}), schema)
    with pytest.raises(ConfigError, match="unknown model 'wide_dep'; did you mean 'wide_deep'"):
        build_model(ModelConfig(name="wide_dep"), schema)
    with pytest.raises(ConfigError, match="'itemid' is not a sparse feature"):
        build_model(ModelConfig(name="wide_deep", params={"deep_features": ["itemid"]}), schema)


def _unranged_numbers(cls, where, seen):
    """Dotted names of int/float fields of dataclass ``cls`` (and nested ones) that carry no Range."""
    import dataclasses
    import typing

    from recsys.config import Range

    if cls in seen:
        return []
    seen.add(cls)
    out = []
    hints = typing.get_type_hints(cls, include_extras=True)

    def visit(tp, name):
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            if any(isinstance(m, Range) for m in tp.__metadata__):
                return
            tp = typing.get_args(tp)[0]
            origin = typing.get_origin(tp)
        if tp in (int, float):
            out.append(name)
        elif dataclasses.is_dataclass(tp):
            out.extend(_unranged_numbers(tp, name, seen))
        elif origin is not None and origin is not typing.Literal:
            for i, arg in enumerate(typing.get_args(tp)):
                visit(arg, f"{name}[{i}]" if origin in (list, tuple) else name)

    for f in dataclasses.fields(cls):
        if not f.metadata.get("internal"):
            visit(hints[f.name], f"{where}.{f.name}")
    return out


# float options whose whole finite range is meaningful (an initial logit bias; split timestamps)
UNBOUNDED = {"model.params.init_bias", "config.data.split.valid_from", "config.data.split.test_from",
             "config.data.side_columns[0].fill"}


def test_every_model_option_has_a_range():
    """Every numeric config key, run config and model options alike, is range-checked when loaded."""
    from recsys.config import Config
    from recsys.models.base import model_class, model_names

    missing = _unranged_numbers(Config, "config", set())
    for name in model_names():
        missing += _unranged_numbers(model_class(name).Config, "model.params", set())
    assert [m for m in missing if m not in UNBOUNDED] == []
