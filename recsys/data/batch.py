"""The unit of training: one batch of samples as tensors, movable between devices by torchrec's pipelines.

Shapes (B = batch size, Dd = number of dense features, F = number of sparse features):
    dense: [B, Dd] float32
    sparse: KeyedJaggedTensor with F keys (schema order) and stride B
    labels: {task: [B] float32}
    scenario: [B] int64 in [0, num_scenarios)
    user: [B] int64, the user's encoded id (-1 when the data has no user); what models read
    user_key: [B] int64, a 64-bit key of the raw user value (the bits of recsys.data.history.value_keys), or
        empty: tells users apart in evaluation (GAUC, NDCG) where unseen users share one encoded id
    weights: [B] float32 sample weights
    row_id: [B] int64 stable instance id; -1 marks padding rows that only keep ranks in step
    groups: {name: [B] int64} evaluation-only breakdowns (e.g. lifecycle stage)
    oracle: {task: [B] float32} true probabilities (synthetic data only)
    time: [B] float64 timestamp or empty
    history: {name: [B] float32} the user's strictly earlier training labels, when the dataset spec asks for
        them (see recsys.data.history): ``count``, ``<task>/count``, ``<task>/mean``; training targets only,
        never model inputs
    extras: {name: [B] float32} per-row side columns joined by row id (``data.side_columns``), e.g. SSIM's
        shared-instance flags
"""

from dataclasses import dataclass, field
from typing import Dict

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from torchrec.streamable import Pipelineable


def _map(d: Dict[str, torch.Tensor], fn) -> Dict[str, torch.Tensor]:
    return {k: fn(v) for k, v in d.items()}


@dataclass
class Batch(Pipelineable):
    """A batch of samples (see the module docstring for shapes).

    Example::

        batch = columns.take(np.arange(4)).to_batch(schema.feature_names)
        batch.sparse.keys()  # ['user_id', 'item_id', ...]
    """

    dense: torch.Tensor
    sparse: KeyedJaggedTensor
    labels: Dict[str, torch.Tensor]
    scenario: torch.Tensor
    user: torch.Tensor
    weights: torch.Tensor
    row_id: torch.Tensor
    groups: Dict[str, torch.Tensor] = field(default_factory=dict)
    oracle: Dict[str, torch.Tensor] = field(default_factory=dict)
    time: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.float64))
    history: Dict[str, torch.Tensor] = field(default_factory=dict)
    extras: Dict[str, torch.Tensor] = field(default_factory=dict)
    user_key: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))

    @property
    def size(self) -> int:
        return int(self.row_id.numel())

    def _apply(self, fn, kjt_fn) -> "Batch":
        return Batch(
            dense=fn(self.dense),
            sparse=kjt_fn(self.sparse),
            labels=_map(self.labels, fn),
            scenario=fn(self.scenario),
            user=fn(self.user),
            weights=fn(self.weights),
            row_id=fn(self.row_id),
            groups=_map(self.groups, fn),
            oracle=_map(self.oracle, fn),
            time=fn(self.time),
            history=_map(self.history, fn),
            extras=_map(self.extras, fn),
            user_key=fn(self.user_key),
        )

    def to(self, device: torch.device, non_blocking: bool = False) -> "Batch":
        return self._apply(
            lambda t: t.to(device=device, non_blocking=non_blocking),
            lambda k: k.to(device=device, non_blocking=non_blocking),
        )

    def record_stream(self, stream: torch.Stream) -> None:
        tensors = [self.dense, self.scenario, self.user, self.weights, self.row_id, self.time, self.user_key]
        tensors += list(self.labels.values()) + list(self.groups.values()) + list(self.oracle.values())
        tensors += list(self.history.values())
        tensors += list(self.extras.values())
        for t in tensors:
            t.record_stream(stream)
        self.sparse.record_stream(stream)

    def pin_memory(self) -> "Batch":
        return self._apply(lambda t: t.pin_memory(), lambda k: k.pin_memory())
