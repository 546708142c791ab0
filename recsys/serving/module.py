"""The plain-tensor inference entry point every registered model gets: no ``Batch``, no labels.

:class:`ServingModule` wraps a trained model (eval mode). Its inputs are what a server has after preprocessing:

    dense     [B, Dd] float32          the dense features, transformed, in schema order
    values    [N] int64                the sparse features' table rows, feature-major: every row's ids of the
                                       first feature (schema order), then of the second, ...
    lengths   [F * B] int32 or int64   ids per (feature, row) in the same order (1 for a single-hot feature)
    scenario  [B] int64                scenario index in [0, S) (zeros when the data has one scenario)

and its output is ``{task: [B] float32}``: a probability for binary tasks, the prediction in the label's space
for regression tasks (``expm1`` of a ``log_mse`` output), the transform evaluation and ``recsys predict`` apply
(:func:`recsys.train.losses.prediction_of`). A model with a per-user tracker (STAN's Beta tracker) also returns
``user_state/<task>``: the user's posterior mean ``alpha / (alpha + beta)`` held by the tracker, so the tracker's
state travels inside the exported program.

The ``Batch`` a model reads is built inside ``forward`` from these tensors. FX tracing goes through the dataclass
and keeps only tensor operations, so the same module is eager code, a traced graph and a TorchScript program.
Fields models read only in training (labels, history, extras, weights) are empty or neutral: weights 1, row ids
0, evaluation groups 0, user = the user feature's ids (single-hot by the dataset's rule). Embedding projectors
(rows collected for TensorBoard during evaluation) are switched off.

Example::

    module = ServingModule(load_for_inference("runs/wd"))
    scores = module(dense, values, lengths, scenario)      # {"ctr": [B], "stay": [B], "cvr": [B]}
"""

from typing import Dict, List, Tuple

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.data.batch import Batch
from recsys.models.base import RankingModel
from recsys.modules.lifecycle import BetaTracker, EmbeddingProjector
from recsys.train.losses import prediction_of

USER_STATE = "user_state/"  # output key prefix of a per-user tracker's posterior means


class ServingModule(nn.Module):
    """``(dense, values, lengths, scenario) -> {task: prediction [B]}`` for a trained model (see module docs).

    Args:
        model: a model of any registered class, weights loaded (it is put in eval mode).
    """

    def __init__(self, model: RankingModel) -> None:
        super().__init__()
        schema = model.schema
        self.model = model.eval()
        self.keys: List[str] = schema.feature_names
        self.tasks = list(schema.tasks)
        self.groups: List[str] = [name for name, _ in schema.eval_groups]
        self.user_position = schema.feature_names.index(schema.user_feature) if schema.user_feature else -1
        for m in model.modules():
            if isinstance(m, EmbeddingProjector):
                m.max_rows = 0  # rows for TensorBoard's projector are an evaluation aid, not a serving output
        trackers = [(name, m) for name, m in model.named_modules() if isinstance(m, BetaTracker)]
        # one tracker (STAN) names its outputs by task; several would be told apart by their module path
        self.trackers: List[Tuple[str, BetaTracker]] = [
            (USER_STATE if len(trackers) == 1 else f"{USER_STATE}{name}/", m) for name, m in trackers
        ]

    @property
    def output_names(self) -> List[str]:
        """The keys of ``forward``'s result, in order."""
        return [t.name for t in self.tasks] + [prefix + t for prefix, m in self.trackers for t in m.tasks]

    def _user(self, values: torch.Tensor, lengths: torch.Tensor, scenario: torch.Tensor) -> torch.Tensor:
        """The user feature's ids [B] (single-hot), or -1 per row when the schema has no user feature."""
        if self.user_position < 0:
            return torch.full_like(scenario, -1)
        rows = scenario.size(0)
        start = lengths[: self.user_position * rows].sum()
        return values[start + torch.arange(rows, device=values.device)]

    def forward(
        self, dense: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor, scenario: torch.Tensor
    ) -> Dict[str, torch.Tensor]:
        values = values.long()
        lengths = lengths.int()
        zeros = torch.zeros_like(scenario)
        user = self._user(values, lengths, scenario)
        batch = Batch(
            dense=dense.float(),
            sparse=KeyedJaggedTensor.from_lengths_sync(keys=self.keys, values=values, lengths=lengths),
            labels={},
            scenario=scenario,
            user=user,
            weights=torch.ones_like(scenario, dtype=torch.float32),
            row_id=zeros,
            groups={g: zeros for g in self.groups},
        )
        outputs = self.model(batch)
        result: Dict[str, torch.Tensor] = {}
        for task in self.tasks:
            result[task.name] = prediction_of(task, outputs[task.name].float())
        for prefix, tracker in self.trackers:
            alpha, beta = tracker.distribution(user)
            mean = alpha / (alpha + beta)
            for i, name in enumerate(tracker.tasks):
                result[prefix + name] = mean[:, i]
        return result


def batch_inputs(batch: Batch) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A training ``Batch`` as :class:`ServingModule`'s inputs ``(dense, values, lengths, scenario)``."""
    return batch.dense, batch.sparse.values(), batch.sparse.lengths(), batch.scenario
