"""Published models, one file each; every module registers its models (``register_model``) when imported.

``recsys.models.index`` lists every registered name with its module, a one-line description and its data
requirements without importing torch (``recsys models`` prints it); :func:`model_names` and :func:`model_class`
import the model modules. The names below are imported on first use, so ``import recsys.models`` stays cheap.
"""

from typing import Any

__all__ = ["RankingModel", "build_model", "model_class", "model_names", "register_model"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from recsys.models import base

        return getattr(base, name)
    raise AttributeError(f"module 'recsys.models' has no attribute {name!r}")
