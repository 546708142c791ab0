"""Published models, one file each; every module here registers its models on import."""

import importlib
import pkgutil

from recsys.models.base import RankingModel, build_model, model_class, model_names, register_model

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base":
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["RankingModel", "build_model", "model_class", "model_names", "register_model"]
