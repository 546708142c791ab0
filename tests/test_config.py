import os
import subprocess
import sys
import typing

import pytest

from recsys.config import (
    Config,
    ModelConfig,
    ShardingConfig,
    apply_overrides,
    check_device_support,
    from_dict,
    load_config,
    parse_yaml,
)
from recsys.data.spec import DatasetSpec, SparseSpec, TaskSpec
from recsys.errors import ConfigError
from recsys.schema import (
    COMPUTE_KERNELS,
    GPU_COMPUTE_KERNELS,
    GPU_SHARDING_TYPES,
    SHARDING_TYPES,
    ComputeKernel,
    FeatureGroup,
    Pooling,
    RegressionLoss,
    Schema,
    SparseFeature,
    Task,
    TaskKind,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def torch_cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


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
    assert SparseFeature("a", 10, embedding_dim=6).embedding_dim == 6  # FBGEMM's multiple of 4: SparseArch pads
    with pytest.raises(ConfigError, match="embedding_dim must be >= 1, got 0"):
        SparseFeature("a", 10, embedding_dim=0)
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


def test_loading_a_config_probes_no_device_and_imports_no_torch():
    """Issue 18: config loading must not depend on the host (``device: auto`` is resolved by the trainer,
    which then checks the sharding against the device it got)."""
    code = ("import sys; from recsys.config import load_config; "
            "cfg = load_config('configs/wide_deep_synthetic.yaml', ['sharding.sharding_types=[row_wise]']); "
            "sys.exit(99 if 'torch' in sys.modules else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=REPO))
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_device_support_is_checked_against_the_device_in_use():
    sharding = from_dict(ShardingConfig, {"sharding_types": ["table_wise"], "tables": {"t": {
        "sharding_types": ["table_row_wise"], "compute_kernels": ["fused_uvm"]}}})
    check_device_support(sharding, "cuda")
    with pytest.raises(ConfigError, match=r"trainer: sharding type\(s\) \['table_row_wise'\] need CUDA/NCCL"):
        check_device_support(sharding, "cpu", "trainer")
    sharding.tables["t"].sharding_types = []
    with pytest.raises(ConfigError, match=r"compute kernel\(s\) \['fused_uvm'\] need CUDA"):
        check_device_support(sharding, "cpu")


def test_specs_and_configs_share_the_schemas_vocabularies():
    hints = {cls: typing.get_type_hints(cls) for cls in (SparseSpec, TaskSpec, ShardingConfig, SparseFeature, Task)}
    assert hints[SparseSpec]["group"] is hints[SparseFeature]["group"] is FeatureGroup
    assert hints[SparseSpec]["pooling"] is hints[SparseFeature]["pooling"] is Pooling
    assert hints[TaskSpec]["kind"] is hints[Task]["kind"] is TaskKind
    assert hints[TaskSpec]["loss"] is hints[Task]["loss"] is RegressionLoss
    assert hints[ShardingConfig]["compute_kernel"] is ComputeKernel
    assert set(GPU_SHARDING_TYPES) <= set(SHARDING_TYPES) and set(GPU_COMPUTE_KERNELS) <= set(COMPUTE_KERNELS)
    with pytest.raises(ConfigError, match=r"'sparse\[0\].group' must be one of \['user', 'host', 'item', 'context', "
                                          r"'scenario'\], got 'items'; did you mean 'item'\?"):
        from_dict(DatasetSpec, {"name": "t", "source": {"path": "x"}, "sparse": [{"name": "a", "group": "items"}]})


@pytest.mark.skipif(torch_cuda_available(), reason="row-wise sharding runs on this host's GPU")
def test_the_trainer_refuses_gpu_only_sharding_on_the_cpu_it_resolved(tiny_config):
    from recsys.train.trainer import Trainer

    cfg = tiny_config(extra=["sharding.sharding_types=[row_wise]"])  # device: auto, loaded without probing
    assert cfg.device == "auto"
    with pytest.raises(ConfigError, match=r"sharding type\(s\) \['row_wise'\] need CUDA/NCCL"):
        Trainer(cfg)
    assert not os.path.exists(cfg.run_dir)
