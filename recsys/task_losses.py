"""Task losses: the one table of the per-task losses a dataset spec can name.

Each entry says everything the rest of the library needs to know about a loss:

* ``forward(output, label)``: the per-row loss of a model output (what :class:`~recsys.train.losses.MultiTaskLoss`
  weights, masks and sums);
* ``inverse(output)``: the output in the label's space (the inverse link; what evaluation scores and
  ``recsys predict`` writes);
* ``labels``: the labels the loss is defined on, checked for every row when data is read (one line naming file,
  column and row, before anything is trained).

Binary tasks use ``bce`` (on logits, never sigmoid followed by BCE on probabilities); a regression task names
its loss (``tasks[].loss`` in a spec). A new loss is one name in :data:`recsys.schema.RegressionLoss` (the
vocabulary specs are checked against) and one entry here; importing this module checks that the two agree.

Model-specific loss terms (auxiliary heads, regularisers, ESMM's joint CTCVR loss) are not task losses: a model
adds them through its hooks (:meth:`~recsys.models.base.RankingModel.extra_losses`, ``loss_weights``,
``loss_views``, ``dependent_loss``).

Example::

    loss = loss_of(Task("stay", kind="regression", loss="log_mse"))
    loss.forward(torch.tensor([0.0]), torch.tensor([math.e - 1]))   # tensor([1.])
    loss.inverse(torch.tensor([1.0]))                                # tensor([1.7183]): seconds again
"""

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Protocol, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from recsys.schema import BINARY_LOSS, REGRESSION_LOSSES, loss_name

Elementwise = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class LabelDomain:
    """The labels a loss is defined on (beyond being finite, which every label must be).

    Args:
        values: the only values a label may take (binary: 0 and 1), or None.
        minimum: the smallest label allowed (``log_mse`` takes ``log1p`` of it), or None.
    """

    values: Optional[Tuple[float, ...]] = None
    minimum: Optional[float] = None

    def first_outside_values(self, y: np.ndarray) -> Optional[int]:
        """The first row whose label is not one of ``values`` (None when all are, or any value goes)."""
        if self.values is None:
            return None
        bad = ~np.isin(y, self.values)
        return int(np.flatnonzero(bad)[0]) if bad.any() else None

    def first_below_minimum(self, y: np.ndarray) -> Optional[int]:
        """The first row whose label is below ``minimum`` (None when none is)."""
        if self.minimum is None:
            return None
        bad = y < self.minimum
        return int(np.flatnonzero(bad)[0]) if bad.any() else None


@dataclass(frozen=True)
class TaskLoss:
    """One task loss (see the module docstring).

    Args:
        name: its key in :data:`TASK_LOSSES` (a spec's ``tasks[].loss``; ``bce`` for binary tasks).
        kind: the task kind it serves (``binary`` or ``regression``).
        forward: ``(output, label) -> loss``, elementwise (outputs [B] or [B, K] with labels broadcast).
        inverse: ``output -> prediction`` in the label's space, elementwise.
        labels: the labels it is defined on.
        doc: one line for docs and error messages.
    """

    name: str
    kind: str
    forward: Elementwise
    inverse: Elementwise
    labels: LabelDomain
    doc: str

    def outside_values_message(self, task: str, value: float) -> str:
        shown = " or ".join(f"{v:g}" for v in self.labels.values or ())
        return f"{self.kind} label of task '{task}' must be {shown}, got {value:g}"

    def below_minimum_message(self, task: str, value: float) -> str:
        return f"label of task '{task}' must be >= {self.labels.minimum:g} for the {self.name} loss, got {value:g}"


def _identity(output: torch.Tensor) -> torch.Tensor:
    return output


def _bce(output: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(output, label, reduction="none")


def _mse(output: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    return (output - label) ** 2


def _log_mse(output: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    return (output - torch.log1p(label)) ** 2


def _log_mse_inverse(output: torch.Tensor) -> torch.Tensor:
    return torch.expm1(output).clamp_min(0.0)


def _huber(output: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    return F.huber_loss(output, label, reduction="none", delta=1.0)


TASK_LOSSES: Dict[str, TaskLoss] = {
    loss.name: loss
    for loss in (
        TaskLoss(
            "bce",
            "binary",
            _bce,
            torch.sigmoid,
            LabelDomain(values=(0.0, 1.0)),
            "binary cross-entropy on the logit; predictions are sigmoid(logit)",
        ),
        TaskLoss("mse", "regression", _mse, _identity, LabelDomain(), "squared error on the label"),
        TaskLoss(
            "log_mse",
            "regression",
            _log_mse,
            _log_mse_inverse,
            LabelDomain(minimum=0.0),
            "squared error on log1p(label), for heavy-tailed labels such as stay times; predictions are "
            "expm1(output) clamped at 0",
        ),
        TaskLoss(
            "huber",
            "regression",
            _huber,
            _identity,
            LabelDomain(),
            "Huber loss (delta 1) on the label: squared near the label, linear beyond",
        ),
    )
}

_declared = {"binary": {BINARY_LOSS}, "regression": set(REGRESSION_LOSSES)}
_tabled = {kind: {n for n, loss in TASK_LOSSES.items() if loss.kind == kind} for kind in _declared}
if _tabled != _declared:  # pragma: no cover - a loss added to one of recsys.schema and this table only
    raise ImportError(f"recsys.task_losses: the table's losses {_tabled} differ from recsys.schema's {_declared}")


class _HasLoss(Protocol):
    @property
    def kind(self) -> str: ...

    @property
    def loss(self) -> str: ...


def loss_of(task: _HasLoss) -> TaskLoss:
    """The loss of ``task`` (a :class:`~recsys.schema.Task` or a spec's ``TaskSpec``)."""
    return TASK_LOSSES[loss_name(task.kind, task.loss)]
