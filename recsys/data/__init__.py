"""Data: dataset specs, readers, id encoding, the Batch, loaders and the synthetic world."""

from recsys.data.batch import Batch
from recsys.data.columns import Columns, Ragged
from recsys.data.dataset import SPLITS, Dataset
from recsys.data.loader import BatchLoader
from recsys.data.spec import DatasetSpec, load_spec

__all__ = ["Batch", "BatchLoader", "Columns", "Dataset", "DatasetSpec", "Ragged", "SPLITS", "load_spec"]
