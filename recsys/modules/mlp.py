"""Multi-layer perceptrons."""

from typing import List, Literal, Optional, Sequence, get_args

import torch
from torch import nn

# the names a config may give (checked when it is loaded)
Activation = Literal["relu", "gelu", "silu", "prelu", "tanh"]
Norm = Literal["none", "batch", "layer"]

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "prelu": nn.PReLU, "tanh": nn.Tanh}
assert set(ACTIVATIONS) == set(get_args(Activation))


def make_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation '{name}' is not one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class MLP(nn.Module):
    """Fully connected layers ``Linear -> [norm] -> activation -> [dropout]``, optionally followed by a plain
    linear output layer.

    torchrec's ``MLP`` applies the activation to every layer and has no dropout or normalisation, which towers
    and experts here need; the per-layer blocks are exposed as ``blocks`` for modules that act between layers
    (gates scaling hidden units).

    Args:
        in_dim: input width.
        hidden: widths of the hidden layers.
        output_dim: if given, a final ``Linear(hidden[-1], output_dim)`` without activation.
        activation: ``relu``, ``gelu``, ``silu``, ``prelu`` or ``tanh``.
        dropout: dropout after each hidden activation.
        norm: ``batch``, ``layer`` or ``none`` between each linear layer and its activation.

    Shapes: input [B, in_dim] -> output [B, output_dim or hidden[-1]].

    Example::

        tower = MLP(64, [128, 64], output_dim=1)
        logit = tower(x).squeeze(-1)      # [B]
    """

    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int],
        output_dim: Optional[int] = None,
        activation: str = "relu",
        dropout: float = 0.0,
        norm: str = "none",
    ) -> None:
        super().__init__()
        if norm not in get_args(Norm):
            raise ValueError(f"norm '{norm}' is not one of {', '.join(get_args(Norm))}")
        blocks: List[nn.Module] = []
        width = in_dim
        for h in hidden:
            layers: List[nn.Module] = [nn.Linear(width, h)]
            if norm == "batch":
                layers.append(nn.BatchNorm1d(h))
            elif norm == "layer":
                layers.append(nn.LayerNorm(h))
            layers.append(make_activation(activation))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            blocks.append(nn.Sequential(*layers))
            width = h
        self.blocks = nn.ModuleList(blocks)
        self.output = nn.Linear(width, output_dim) if output_dim is not None else None
        self.output_dim = output_dim if output_dim is not None else width
        self.hidden_dims = list(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.output(x) if self.output is not None else x


class TaskHeads(nn.Module):
    """One linear output per task.

    Shapes: input [B, in_dim] -> ``{task: [B]}``.
    """

    def __init__(self, in_dim: int, tasks: Sequence[str]) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({t: nn.Linear(in_dim, 1) for t in tasks})

    def forward(self, x: torch.Tensor) -> "dict[str, torch.Tensor]":
        return {t: head(x).squeeze(-1) for t, head in self.heads.items()}
