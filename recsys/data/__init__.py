"""Data: dataset specs, readers, id encoding, the Batch, loaders and the synthetic world."""

import importlib
from typing import TYPE_CHECKING, Any, Dict

if TYPE_CHECKING:
    from recsys.data.batch import Batch
    from recsys.data.columns import Columns, Ragged
    from recsys.data.dataset import SPLITS, Dataset
    from recsys.data.loader import BatchLoader
    from recsys.data.spec import DatasetSpec, load_spec

# imported on first use: a spec or config is read without torch
_MODULE_OF: Dict[str, str] = {
    "Batch": "recsys.data.batch",
    "Columns": "recsys.data.columns",
    "Ragged": "recsys.data.columns",
    "SPLITS": "recsys.data.dataset",
    "Dataset": "recsys.data.dataset",
    "BatchLoader": "recsys.data.loader",
    "DatasetSpec": "recsys.data.spec",
    "load_spec": "recsys.data.spec",
}

__all__ = ["Batch", "BatchLoader", "Columns", "Dataset", "DatasetSpec", "Ragged", "SPLITS", "load_spec"]


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'recsys.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULE_OF[name]), name)
