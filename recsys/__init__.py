"""recsys: TorchRec-native industrial ranking (multi-task, multi-scenario, sharded embeddings).

Programmatic use::

    import recsys

    cfg = recsys.load_config("configs/wide_deep_movielens.yaml", overrides=["train.epochs=2"])
    trainer = recsys.Trainer(cfg)            # fits encoders, builds the model under DMP
    result = trainer.fit()                   # early stopping on validation, best checkpoint restored
    print(result["test"]["like/auc"])

    model = recsys.build_model(cfg.model, trainer.schema)   # a fresh model for a custom loop
"""

from typing import Any

__version__ = "0.1.0"

__all__ = ["Config", "Dataset", "Schema", "Trainer", "build_model", "load_config", "model_names"]


def __getattr__(name: str) -> Any:  # imported lazily so `import recsys` stays cheap
    if name in ("Config", "load_config"):
        from recsys import config

        return getattr(config, name)
    if name == "Schema":
        from recsys.schema import Schema

        return Schema
    if name == "Dataset":
        from recsys.data.dataset import Dataset

        return Dataset
    if name in ("build_model", "model_names"):
        from recsys.models import base

        return getattr(base, name)
    if name == "Trainer":
        from recsys.train.trainer import Trainer

        return Trainer
    raise AttributeError(f"module 'recsys' has no attribute {name!r}")
