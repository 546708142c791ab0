"""The unit of training: one batch of samples as tensors, movable between devices by torchrec's pipelines.

Its fields are the row record, declared and documented once in :mod:`recsys.data.record` (shapes for B rows:
``dense`` [B, Dd], ``labels`` {task: [B]}, ``row_id`` [B] with -1 for padding rows, ...). Here ``sparse`` is a
KeyedJaggedTensor with the schema's F features as keys and stride B, and an absent optional field (``time``,
``user_key``) is an empty tensor.
"""

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from torchrec.streamable import Pipelineable

from recsys.data.record import RowFields, arrays, row_fields, tree_map


@dataclass(kw_only=True)
class Batch(RowFields[torch.Tensor, KeyedJaggedTensor], Pipelineable):
    """A batch of samples (see the module docstring). An absent optional field is an empty tensor, so every
    field moves between devices like the others.

    Example::

        batch = columns.take(np.arange(4)).to_batch(schema.feature_names)
        batch.sparse.keys()  # ['user_id', 'item_id', ...]
    """

    def __post_init__(self) -> None:
        for name, f in row_fields(Batch):
            if f.optional and getattr(self, name) is None:
                setattr(self, name, torch.empty(0, dtype=_torch_dtype(f.dtype)))

    @property
    def size(self) -> int:
        return int(self.row_id.numel())

    def _apply(
        self, fn: Callable[[torch.Tensor], torch.Tensor], kjt_fn: Callable[[KeyedJaggedTensor], KeyedJaggedTensor]
    ) -> "Batch":
        return tree_map(self, lambda t, f: fn(t), sparse=kjt_fn)

    def to(self, device: torch.device, non_blocking: bool = False) -> "Batch":
        return self._apply(
            lambda t: t.to(device=device, non_blocking=non_blocking),
            lambda k: k.to(device=device, non_blocking=non_blocking),
        )

    def record_stream(self, stream: torch.Stream) -> None:
        for t in arrays(self):
            t.record_stream(stream)
        self.sparse.record_stream(stream)

    def pin_memory(self) -> "Batch":
        return self._apply(lambda t: t.pin_memory(), lambda k: k.pin_memory())


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    """The torch dtype of numpy dtype ``dtype``."""
    return torch.from_numpy(np.zeros(0, dtype)).dtype
