"""Multi-layer perceptrons: the one layer loop every MLP here is built by, and the MLP options of model configs.

:func:`mlp_layers` builds ``Linear -> [norm] -> activation -> [dropout]`` blocks and an optional linear output
layer; the kind of linear layer is a parameter, so :class:`MLP` (``nn.Linear``), the per-scenario towers and
STAR's star-topology network (:mod:`recsys.modules.scenario`) are the same loop over different weights.

Shapes: B batch, D input width, H hidden width, O output width.
"""

from dataclasses import dataclass
from typing import Callable, List, Literal, Optional, Sequence, Tuple, get_args

import torch
from torch import nn

from recsys.config import Fraction

# the names a config may give (checked when it is loaded)
Activation = Literal["relu", "gelu", "silu", "prelu", "tanh"]
Norm = Literal["none", "batch", "layer"]

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "prelu": nn.PReLU, "tanh": nn.Tanh}
assert set(ACTIVATIONS) == set(get_args(Activation))

LinearFactory = Callable[[int, int], nn.Module]  # (in width, out width) -> a linear layer


def make_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation '{name}' is not one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def make_norm(name: str, width: int) -> Optional[nn.Module]:
    """``BatchNorm1d`` (``batch``), ``LayerNorm`` (``layer``) over ``width`` units, or None (``none``)."""
    if name == "batch":
        return nn.BatchNorm1d(width)
    return nn.LayerNorm(width) if name == "layer" else None


def mlp_layers(
    in_dim: int,
    hidden: Sequence[int],
    output_dim: Optional[int] = None,
    activation: str = "relu",
    dropout: float = 0.0,
    norm: str = "none",
    linear: LinearFactory = nn.Linear,
) -> Tuple[List[List[nn.Module]], Optional[nn.Module], int]:
    """The layers of an MLP, created in order (so a seed gives the same weights whatever container holds them).

    Args:
        in_dim: input width D.
        hidden: widths of the hidden layers.
        output_dim: if given, a final ``linear(hidden[-1], output_dim)`` without activation.
        activation: ``relu``, ``gelu``, ``silu``, ``prelu`` or ``tanh``.
        dropout: dropout after each hidden activation.
        norm: ``batch``, ``layer`` or ``none`` between each linear layer and its activation.
        linear: builds each linear layer from (in, out) widths: ``nn.Linear``, or layers with per-scenario
            weights (:class:`~recsys.modules.scenario.ScenarioLinear`, ``StarLinear``).

    Returns:
        (the hidden blocks, each ``[linear, (norm), activation, (dropout)]``; the output layer or None; the
        output width).
    """
    if norm not in get_args(Norm):
        raise ValueError(f"norm '{norm}' is not one of {', '.join(get_args(Norm))}")
    blocks: List[List[nn.Module]] = []
    width = in_dim
    for h in hidden:
        block = [linear(width, h)]
        normalise = make_norm(norm, h)
        if normalise is not None:
            block.append(normalise)
        block.append(make_activation(activation))
        if dropout > 0:
            block.append(nn.Dropout(dropout))
        blocks.append(block)
        width = h
    output = linear(width, output_dim) if output_dim is not None else None
    return blocks, output, output_dim if output_dim is not None else width


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
        blocks, output, width = mlp_layers(in_dim, hidden, output_dim, activation, dropout, norm)
        self.blocks = nn.ModuleList(nn.Sequential(*block) for block in blocks)
        self.output = output
        self.output_dim = width
        self.hidden_dims = list(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.output(x) if self.output is not None else x


@dataclass
class MLPOptions:
    """How a model's MLPs (experts, towers, bottoms) are built; flat keys of a model's ``model.params``.

    Args:
        activation: after each hidden layer (``relu``, ``gelu``, ``silu``, ``prelu``, ``tanh``).
        dropout: after each hidden activation.
    """

    activation: Activation = "relu"
    dropout: Fraction = 0.0

    def mlp(self, in_dim: int, hidden: Sequence[int], output_dim: Optional[int] = None, norm: str = "none") -> MLP:
        """An :class:`MLP` with these options."""
        return MLP(in_dim, hidden, output_dim, activation=self.activation, dropout=self.dropout, norm=norm)


@dataclass
class NormOptions:
    """Normalisation of a model's main MLP.

    Args:
        norm: ``batch``, ``layer`` or ``none`` between each linear layer and its activation.
    """

    norm: Norm = "none"
