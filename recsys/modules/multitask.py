"""Blocks shared by the multi-task models: per-task towers and heads, the funnel's tasks read from the schema, a
gradient-scaling op and the CTR:CVR sample ratio.

:func:`task_towers` is the one tower builder: one MLP per task ending in a single output. :class:`TaskTowers` runs
them on per-task inputs; models that act between tower layers (PEPNet's and MultiCBMR's gates, STAN's state
embedding) hold its ``ModuleDict`` themselves. :class:`TaskHeads` is the tower without hidden layers over one
shared representation (the output layer of single-network models such as DNN and Wide&Deep).

Shapes: B batch, D input width, H tower width.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from recsys.config import Width
from recsys.data.batch import Batch
from recsys.errors import ConfigError
from recsys.modules.mlp import MLP, MLPOptions
from recsys.schema import Schema


def funnel_tasks(schema: Schema, model: str, cvr_task: Optional[str] = None) -> Tuple[str, str]:
    """``(ctr, cvr)``: the binary task with ``depends_on`` and its parent (the click -> conversion funnel).

    Args:
        schema: the tasks.
        model: the model's registry name (for the error message).
        cvr_task: which dependent task to use when the schema has several (default: the only one).

    Raises:
        ConfigError: the schema has no funnel, or several and ``cvr_task`` does not pick one.
    """
    dependents = [t.name for t in schema.tasks if t.kind == "binary" and t.depends_on is not None]
    if cvr_task is not None:
        if cvr_task not in dependents:
            raise ConfigError(
                f"model '{model}': model.params.cvr_task '{cvr_task}' is not a binary task with "
                f"depends_on (candidates: {dependents or 'none'})"
            )
        return schema.task(cvr_task).depends_on, cvr_task  # type: ignore[return-value]
    if not dependents:
        raise ConfigError(
            f"model '{model}' needs a click -> conversion funnel: a binary task with depends_on "
            f"(tasks: {', '.join(schema.task_names)})"
        )
    if len(dependents) > 1:
        raise ConfigError(f"model '{model}': several funnel tasks {dependents}; choose one with model.params.cvr_task")
    return schema.task(dependents[0]).depends_on, dependents[0]  # type: ignore[return-value]


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


class GradScale(nn.Module):
    """Identity in the forward pass; multiplies the gradient by ``scale`` in the backward pass.

    ``scale=0`` stops the gradient (like ``detach``), ``scale=1`` is a no-op. Used to weaken what one task's loss
    does to representations it shares with another (e.g. the CVR loss into the shared embeddings).

    Shapes: any -> the same.

    Example::

        weak = GradScale(0.1)
        y = weak(x)        # y == x; dL/dx == 0.1 * dL/dy
    """

    def __init__(self, scale: float) -> None:
        super().__init__()
        if not 0.0 <= scale <= 1.0:
            raise ConfigError(f"gradient scale must be in [0, 1], got {scale}")
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale == 1.0:
            return x
        return _ScaleGrad.apply(x, self.scale)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


def task_towers(
    in_dims: Mapping[str, int], hidden: Sequence[int], activation: str = "relu", dropout: float = 0.0
) -> nn.ModuleDict:
    """The tower builder: ``{task: MLP(in_dims[task], hidden, output_dim=1)}`` (``hidden=[]``: a linear output).

    Shapes: each tower [B, D_task] -> [B, 1].
    """
    return nn.ModuleDict(
        {t: MLP(d, hidden, output_dim=1, activation=activation, dropout=dropout) for t, d in in_dims.items()}
    )


class TaskTowers(nn.Module):
    """One MLP tower per task, each ending in a single output: ``{task: [B, D_task]} -> {task: [B]}``.

    Args:
        in_dims: input width per task.
        hidden: hidden widths of every tower (``[]``: a linear head).
        activation, dropout: MLP options.

    Example::

        towers = TaskTowers({"ctr": 64, "cvr": 64}, [32])
        logits = towers({"ctr": h_ctr, "cvr": h_cvr})     # {"ctr": [B], "cvr": [B]}
    """

    def __init__(
        self, in_dims: Mapping[str, int], hidden: Sequence[int], activation: str = "relu", dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.tasks: List[str] = list(in_dims)
        self.towers = task_towers(in_dims, hidden, activation, dropout)

    def forward(self, inputs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return {t: self.towers[t](inputs[t]).squeeze(-1) for t in self.tasks}


class TaskHeads(nn.Module):
    """One linear output per task over a shared representation: [B, D] -> ``{task: [B]}``.

    The towers of a network that is shared up to its output layer (DNN, Wide&Deep): towers without hidden layers
    over one input, each a plain ``nn.Linear`` (state-dict keys ``heads.<task>.weight``).

    Example::

        heads = TaskHeads(64, ["ctr", "cvr"])
        logits = heads(mlp(x))        # {"ctr": [B], "cvr": [B]}
    """

    def __init__(self, in_dim: int, tasks: Sequence[str]) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({t: nn.Linear(in_dim, 1) for t in tasks})

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {t: head(x).squeeze(-1) for t, head in self.heads.items()}


@dataclass
class TowerOptions(MLPOptions):
    """Task towers of a model config (flat ``model.params`` keys).

    Args:
        tower: hidden widths of each task tower.
        activation, dropout: tower MLP options (:class:`~recsys.modules.mlp.MLPOptions`).
    """

    tower: List[Width] = field(default_factory=lambda: [64])

    def towers(self, in_dim: int, tasks: Sequence[str]) -> TaskTowers:
        """One tower per task, all reading inputs of width ``in_dim``."""
        return TaskTowers({t: in_dim for t in tasks}, self.tower, self.activation, self.dropout)


def check_ratio(ratio: Optional[float], model: str) -> None:
    """Refuse a CTR:CVR sample ratio that is not positive."""
    if ratio is not None and not ratio > 0:
        raise ConfigError(
            f"model '{model}': model.params.ctr_cvr_ratio must be > 0 (or null to keep every impression), got {ratio}"
        )


def ctr_sample_weights(batch: Batch, ctr: str, ratio: float) -> torch.Tensor:
    """Per-row 0/1 weights of the CTR loss that keep the CTR:CVR sample ratio at ``ratio``.

    The CVR loss uses the clicked impressions. The CTR loss keeps every clicked impression and a random share
    ``q`` of the non-clicked ones, with ``q = min(1, ratio * clicked / non_clicked)`` counted over the real rows
    of the batch, so that (expected) non-clicked CTR samples : CVR samples = ``ratio`` : 1. ``ratio=1`` trains
    CTR on as many non-clicked impressions as there are clicks (CVR samples). Padding rows (weight 0) count
    for nothing. The kept rows are weighted ``real / kept`` so that the CTR loss (a sum over rows divided by
    the batch's real rows in :class:`~recsys.train.losses.MultiTaskLoss`) is the mean over the kept samples.
    No gradient flows through the weights.

    Shapes: returns [B].
    """
    click = (batch.labels[ctr] > 0).to(torch.float32)
    real = (batch.weights > 0).to(torch.float32)
    clicked = (click * real).sum()
    others = ((1.0 - click) * real).sum()
    keep_rate = (ratio * clicked / others.clamp_min(1.0)).clamp(max=1.0)
    kept = torch.maximum(click, (torch.rand_like(click) < keep_rate).to(torch.float32)) * real
    return (kept * real.sum() / kept.sum().clamp_min(1.0)).detach()
