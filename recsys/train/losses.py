"""Per-task losses driven by the schema, and the train wrapper torchrec's pipelines call.

* each task's per-row loss is its entry of :data:`recsys.task_losses.TASK_LOSSES`: binary cross-entropy on logits
  for binary tasks; ``mse`` on the label, ``log_mse`` on ``log1p(label)`` (heavy-tailed stay times) or ``huber``
  for regression tasks;
* a task with ``depends_on`` (CVR given click) is trained where its parent's label is positive
  (``conditional``), or, for models that ask for it (ESMM), as the product of parent and child probabilities on
  every row against the child's label (``joint``: the CTCVR loss).

Each task's loss is the weighted mean over the rows it applies to; weights are the batch's sample weights
(0 for padding rows) times any per-sample weights the model supplies.

In a multi-process job the mean is over the *global* batch: each rank divides its weighted sum by the mean
over ranks of the per-rank normalisers (one small all-reduce per step). DDP averages dense gradients and
torchrec divides the pooled-embedding gradients by the world size, so W ranks with batch B take exactly the
step one rank takes with batch W x B, also for tasks such as CVR given click whose row count differs per rank.
"""

import math
from typing import Dict, Mapping, NamedTuple, Optional, Tuple

import torch
import torch.distributed as dist
import torch.fx
import torch.nn.functional as F
from torch import nn

from recsys.data.batch import Batch
from recsys.errors import ConfigError
from recsys.models.base import RankingModel
from recsys.schema import Schema, Task
from recsys.task_losses import loss_of


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, stable at both ends (Maechler 2012)."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def joint_bce(parent_logit: torch.Tensor, child_logit: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Per-row BCE of ``p = sigmoid(parent) * sigmoid(child)`` against ``label``, computed in log space."""
    log_p = F.logsigmoid(parent_logit) + F.logsigmoid(child_logit)
    return -(label * log_p + (1.0 - label) * log1mexp(log_p.clamp_max(-1e-7)))


@torch.fx.wrap
def cross_rank_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean of ``x`` over the ranks of the default process group (``x`` itself at world size 1); no
    gradient flows through it. Opaque to FX tracing (a single call in the traced graph).

    Example::

        norm = cross_rank_mean(weights.sum())   # the global batch's normaliser per rank
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    y = x.detach().clone()
    dist.all_reduce(y)
    return y / dist.get_world_size()


def prediction_of(task: Task, output: torch.Tensor) -> torch.Tensor:
    """A model output in the label's space: probability for binary tasks, the value for regression (the
    inverse link of the task's loss)."""
    return loss_of(task).inverse(output)


class MultiTaskLoss(nn.Module):
    """Weighted sum of per-task losses.

    Args:
        schema: tasks, their kinds, dependencies and default weights.
        task_weights: overrides of the tasks' weights in the total.
        dependent_loss: ``conditional`` or ``joint`` (see the module docstring).

    Example::

        loss_fn = MultiTaskLoss(schema)
        losses = loss_fn(batch, model(batch))   # {"ctr": scalar, "cvr": scalar}
    """

    # torchrec's pipeline traces the train module with every submodule lacking a sharded child as an opaque
    # leaf; the loss returns a dict the wrapper iterates, so it is traced through instead (it only indexes
    # static keys, which FX records).
    _is_pytorch_fx_traceable = True

    def __init__(
        self,
        schema: Schema,
        task_weights: Optional[Mapping[str, float]] = None,
        dependent_loss: str = "conditional",
    ) -> None:
        super().__init__()
        if dependent_loss not in ("conditional", "joint"):
            raise ValueError(f"dependent_loss must be conditional or joint, got {dependent_loss!r}")
        for name in task_weights or {}:
            schema.task(name)  # raises for unknown tasks
        self.schema = schema
        self.weights = {t.name: float((task_weights or {}).get(t.name, t.weight)) for t in schema.tasks}
        self.dependent_loss = dependent_loss

    def is_joint(self, task: Task) -> bool:
        """Whether ``task`` is trained jointly with its parent (ESMM's CTCVR loss) rather than by its own loss."""
        return task.kind == "binary" and task.depends_on is not None and self.dependent_loss == "joint"

    def per_sample(self, task: Task, outputs: Dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        """Unreduced loss of ``task`` for every row: [B]."""
        label = batch.labels[task.name]
        out = outputs[task.name]
        if task.depends_on is not None and self.is_joint(task):
            return joint_bce(outputs[task.depends_on], out, label)
        return loss_of(task).forward(out, label)

    def per_view(
        self, task: Task, outputs: Dict[str, torch.Tensor], batch: Batch, predictions: torch.Tensor
    ) -> torch.Tensor:
        """Unreduced loss of ``task`` for K predictions of every row: [B, K] (see ``per_sample``)."""
        label = batch.labels[task.name].unsqueeze(1).expand_as(predictions)
        if task.depends_on is not None and self.is_joint(task):
            return joint_bce(outputs[task.depends_on].unsqueeze(1), predictions, label)
        return loss_of(task).forward(predictions, label)

    def row_weights(self, task: Task, batch: Batch) -> torch.Tensor:
        """Which rows (and how much) ``task``'s loss covers: [B]."""
        w = batch.weights
        if task.depends_on is not None and not self.is_joint(task):
            w = w * (batch.labels[task.depends_on] > 0).to(w.dtype)
        return w

    def forward(
        self,
        batch: Batch,
        outputs: Dict[str, torch.Tensor],
        sample_weights: Optional[Dict[str, torch.Tensor]] = None,
        views: Optional[Dict[str, Tuple[torch.Tensor, torch.Tensor]]] = None,
    ) -> Dict[str, torch.Tensor]:
        """Per-task losses. ``sample_weights`` (detached) scale rows; ``views`` replace a task's prediction by
        several weighted ones per row (see :meth:`~recsys.models.base.RankingModel.loss_views`)."""
        losses: Dict[str, torch.Tensor] = {}
        row_weights = [self.row_weights(task, batch) for task in self.schema.tasks]
        # per task: the global batch's normaliser (mean over ranks of the local weight sums)
        norms = cross_rank_mean(torch.stack([w.sum() for w in row_weights])).clamp_min(1e-12)
        for i, (task, w) in enumerate(zip(self.schema.tasks, row_weights)):
            if sample_weights is not None and task.name in sample_weights:
                w = w * sample_weights[task.name].detach()
            if views is not None and task.name in views:
                predictions, view_weights = views[task.name]
                per_row = (self.per_view(task, outputs, batch, predictions) * view_weights).sum(dim=1)
            else:
                per_row = self.per_sample(task, outputs, batch)
            losses[task.name] = self.weights[task.name] * (per_row * w).sum() / norms[i]
        return losses


class StepOutput(NamedTuple):
    """What the train wrapper hands back beside the loss: detached per-term losses, model outputs, the batch."""

    losses: Dict[str, torch.Tensor]
    outputs: Dict[str, torch.Tensor]
    batch: Batch


class TrainModule(nn.Module):
    """Model plus loss, shaped for torchrec's train pipelines: ``forward(batch) -> (loss, StepOutput)``.

    DistributedModelParallel wraps this module, so the pipeline's forward and backward cover the loss.

    Example::

        module = TrainModule(model, MultiTaskLoss(schema))
        loss, out = module(batch)
        loss.backward()
    """

    def __init__(self, model: RankingModel, loss: MultiTaskLoss) -> None:
        super().__init__()
        if model.dependent_loss != loss.dependent_loss:
            raise ConfigError(
                f"model wants dependent_loss={model.dependent_loss!r} but the loss uses {loss.dependent_loss!r}"
            )
        self.model = model
        self.loss = loss
        self.tasks = loss.schema.task_names

    model: RankingModel

    def forward(self, batch: Batch) -> Tuple[torch.Tensor, StepOutput]:
        outputs = self.model(batch)
        losses = self.loss(
            batch, outputs, self.model.loss_weights(batch, outputs), self.model.loss_views(batch, outputs)
        )
        losses.update(self.model.extra_losses(batch, outputs))
        total = torch.stack(list(losses.values())).sum()
        detached = {k: v.detach() for k, v in losses.items()}
        # indexed by task name, never iterated: under the pipeline's FX trace a submodule's returned dict
        # is an opaque proxy
        return total, StepOutput(detached, {t: outputs[t].detach() for t in self.tasks}, batch)
