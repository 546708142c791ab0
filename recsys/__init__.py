"""recsys: TorchRec-native industrial ranking (multi-task, multi-scenario, sharded embeddings).

Programmatic use::

    import recsys

    cfg = recsys.load_config("configs/wide_deep_movielens.yaml", overrides=["train.epochs=2"])
    trainer = recsys.Trainer(cfg)            # fits encoders, builds the model under DMP
    result = trainer.fit()                   # early stopping on validation, best checkpoint restored
    print(result["test"]["like/auc"])

    model = recsys.build_model(cfg.model, trainer.schema)   # a fresh model for a custom loop

Without YAML, the same objects are built in code (``recsys.DatasetSpec``, ``recsys.Config`` and their sections;
the README's "Without YAML" example) and get the same checks.
"""

from typing import TYPE_CHECKING, Any, Dict, Tuple

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time each name is imported on first use
    from recsys.config import (
        Config,
        DataConfig,
        ModelConfig,
        OptimizerConfig,
        ShardingConfig,
        SplitConfig,
        TrainConfig,
        check_config,
        load_config,
    )
    from recsys.data.dataset import Dataset
    from recsys.data.spec import CategorySpec, DatasetSpec, DenseSpec, FileSpec, SparseSpec, TaskSpec, load_spec
    from recsys.models.base import build_model, model_names
    from recsys.schema import Schema
    from recsys.train.trainer import Trainer

__version__ = "0.1.0"

# public name -> the module defining it (imported lazily so `import recsys` stays cheap: no torch)
_EXPORTS: Dict[str, Tuple[str, ...]] = {
    "recsys.config": (
        "Config",
        "DataConfig",
        "ModelConfig",
        "OptimizerConfig",
        "ShardingConfig",
        "SplitConfig",
        "TrainConfig",
        "check_config",
        "load_config",
    ),
    "recsys.data.spec": ("CategorySpec", "DatasetSpec", "DenseSpec", "FileSpec", "SparseSpec", "TaskSpec", "load_spec"),
    "recsys.data.dataset": ("Dataset",),
    "recsys.models.base": ("build_model", "model_names"),
    "recsys.schema": ("Schema",),
    "recsys.train.trainer": ("Trainer",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'recsys' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
