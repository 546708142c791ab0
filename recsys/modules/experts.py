"""Mixture-of-experts blocks for multi-task models.

* :class:`MMoE` - Ma et al., "Modeling Task Relationships in Multi-task Learning with Multi-gate
  Mixture-of-Experts", KDD 2018: shared experts, one softmax gate per task over them.
* :class:`CGC` and :class:`PLE` - Tang et al., "Progressive Layered Extraction (PLE): A Novel Multi-Task Learning
  (MTL) Model for Personalized Recommendations", RecSys 2020: task-specific and shared experts; each task's gate
  mixes its own and the shared experts; in multi-level PLE a shared gate mixes all experts for the next level.

All return ``{task: [B, H]}`` (the inputs of the task towers) and keep the last gate weights for
``tensorboard_stats()``. Models that drive experts themselves (MultiCBMR scales every expert layer per task) build
them with the same :func:`expert_mlps` and :func:`softmax_gates`. :class:`MMoEOptions` and :class:`PLEOptions` are
the flat config keys of the two; :data:`EXPERT_BACKBONES` picks one by name.

Shapes: B batch, D input width, E experts, H expert output width.
"""

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from recsys.config import NonNegativeInt, PositiveInt, Width
from recsys.modules.mlp import MLP, MLPOptions


def expert_mlps(
    in_dim: int, num: int, hidden: Sequence[int], activation: str = "relu", dropout: float = 0.0
) -> nn.ModuleList:
    """``num`` independent expert MLPs over the same [B, D] input (each [B, D] -> [B, hidden[-1]])."""
    return nn.ModuleList(MLP(in_dim, hidden, activation=activation, dropout=dropout) for _ in range(num))


class ExpertGroup(nn.Module):
    """``num`` independent MLP experts on the same input: [B, D] -> [B, num, H]."""

    def __init__(
        self, in_dim: int, num: int, hidden: Sequence[int], activation: str = "relu", dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.experts = expert_mlps(in_dim, num, hidden, activation, dropout)
        self.output_dim = hidden[-1]

    def __len__(self) -> int:
        return len(self.experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([e(x) for e in self.experts], dim=1)


class SoftmaxGate(nn.Module):
    """Softmax weights over ``num_experts`` from the input: [B, D] -> [B, E] (rows sum to 1)."""

    def __init__(self, in_dim: int, num_experts: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, num_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.linear(x), dim=-1)


def softmax_gates(in_dims: Mapping[str, int], num_experts: int) -> nn.ModuleDict:
    """One :class:`SoftmaxGate` per name (task or scenario) over ``num_experts``, reading ``in_dims[name]``."""
    return nn.ModuleDict({name: SoftmaxGate(d, num_experts) for name, d in in_dims.items()})


def mix(gate: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """[B, E] x [B, E, H] -> [B, H]."""
    return torch.bmm(gate.unsqueeze(1), experts).squeeze(1)


class MMoE(nn.Module):
    """Multi-gate mixture of experts.

    Args:
        in_dim: input width D.
        tasks: task names (one gate each).
        num_experts: E shared experts.
        expert_hidden: widths of each expert MLP (H = last).
        activation, dropout: expert MLP options.

    Example::

        mmoe = MMoE(64, ["ctr", "cvr"], num_experts=4, expert_hidden=[64, 32])
        reps = mmoe(x)        # {"ctr": [B, 32], "cvr": [B, 32]}
    """

    def __init__(
        self,
        in_dim: int,
        tasks: Sequence[str],
        num_experts: int = 4,
        expert_hidden: Sequence[int] = (128, 64),
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.experts = ExpertGroup(in_dim, num_experts, expert_hidden, activation, dropout)
        self.gates = softmax_gates({t: in_dim for t in self.tasks}, num_experts)
        self.output_dim = self.experts.output_dim
        self._last_gates: Dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        experts = self.experts(x)
        out = {}
        for t in self.tasks:
            g = self.gates[t](x)
            self._last_gates[t] = g.detach()
            out[t] = mix(g, experts)
        return out

    @classmethod
    def from_options(cls, in_dim: int, tasks: Sequence[str], options: "MMoEOptions") -> "MMoE":
        """The MMoE a model config's :class:`MMoEOptions` describe."""
        return cls(in_dim, tasks, options.num_experts, options.expert_hidden, options.activation, options.dropout)

    def gate_weights(self) -> Dict[str, torch.Tensor]:
        """The last forward's gate weights per task, [B, E]."""
        return dict(self._last_gates)

    def tensorboard_stats(self) -> Dict[str, torch.Tensor]:
        return {f"gate/{t}/mean_weight": g.mean(dim=0) for t, g in self._last_gates.items()}


class CGC(nn.Module):
    """Customized gate control: one extraction level of PLE.

    Args:
        in_dims: input width per task and for ``"shared"`` (at level 1 all are the feature width).
        tasks: task names.
        specific_experts: experts per task.
        shared_experts: shared experts (0 allowed).
        expert_hidden: expert MLP widths.
        shared_output: also produce the shared representation for a next level (its gate mixes all experts).

    Shapes: ``{task: [B, D_t], "shared": [B, D_s]}`` -> ``{task: [B, H]}`` (+ ``"shared"``).
    """

    def __init__(
        self,
        in_dims: Dict[str, int],
        tasks: Sequence[str],
        specific_experts: int = 1,
        shared_experts: int = 1,
        expert_hidden: Sequence[int] = (128, 64),
        shared_output: bool = False,
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if specific_experts < 1:
            raise ValueError("CGC needs at least one task-specific expert per task")
        self.tasks = list(tasks)
        self.shared_output = shared_output
        self.specific = nn.ModuleDict(
            {t: ExpertGroup(in_dims[t], specific_experts, expert_hidden, activation, dropout) for t in self.tasks}
        )
        self.shared = (
            ExpertGroup(in_dims["shared"], shared_experts, expert_hidden, activation, dropout)
            if shared_experts > 0
            else None
        )
        self.gates = softmax_gates({t: in_dims[t] for t in self.tasks}, specific_experts + shared_experts)
        self.shared_gate = (
            SoftmaxGate(in_dims["shared"], specific_experts * len(self.tasks) + shared_experts)
            if shared_output
            else None
        )
        self.output_dim = expert_hidden[-1]
        self._last_gates: Dict[str, torch.Tensor] = {}

    def forward(self, inputs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        shared = self.shared(inputs["shared"]) if self.shared is not None else None
        specific = {t: self.specific[t](inputs[t]) for t in self.tasks}
        out = {}
        for t in self.tasks:
            pool = specific[t] if shared is None else torch.cat([specific[t], shared], dim=1)
            g = self.gates[t](inputs[t])
            self._last_gates[t] = g.detach()
            out[t] = mix(g, pool)
        if self.shared_gate is not None:
            pool = torch.cat([specific[t] for t in self.tasks] + ([shared] if shared is not None else []), dim=1)
            out["shared"] = mix(self.shared_gate(inputs["shared"]), pool)
        return out

    def tensorboard_stats(self) -> Dict[str, torch.Tensor]:
        return {f"gate/{t}/mean_weight": g.mean(dim=0) for t, g in self._last_gates.items()}


class PLE(nn.Module):
    """Progressive layered extraction: ``levels`` stacked CGC layers; lower levels also pass a shared
    representation up.

    Args:
        in_dim: feature width D.
        tasks: task names.
        levels: number of extraction levels.
        specific_experts, shared_experts: experts per task and shared experts per level.
        expert_hidden: expert MLP widths (the same at every level).

    Example::

        ple = PLE(64, ["ctr", "cvr"], levels=2)
        reps = ple(x)         # {"ctr": [B, 64], "cvr": [B, 64]}
    """

    def __init__(
        self,
        in_dim: int,
        tasks: Sequence[str],
        levels: int = 1,
        specific_experts: int = 1,
        shared_experts: int = 1,
        expert_hidden: Sequence[int] = (128, 64),
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if levels < 1:
            raise ValueError("PLE needs at least one level")
        self.tasks = list(tasks)
        layers: List[CGC] = []
        dims = {name: in_dim for name in self.tasks + ["shared"]}
        for level in range(levels):
            layers.append(
                CGC(
                    dims,
                    self.tasks,
                    specific_experts,
                    shared_experts,
                    expert_hidden,
                    shared_output=level < levels - 1,
                    activation=activation,
                    dropout=dropout,
                )
            )
            dims = {name: expert_hidden[-1] for name in self.tasks + ["shared"]}
        self.levels = nn.ModuleList(layers)
        self.output_dim = expert_hidden[-1]

    @classmethod
    def from_options(cls, in_dim: int, tasks: Sequence[str], options: "PLEOptions") -> "PLE":
        """The PLE a model config's :class:`PLEOptions` describe."""
        return cls(
            in_dim,
            tasks,
            options.levels,
            options.specific_experts,
            options.shared_experts,
            options.expert_hidden,
            options.activation,
            options.dropout,
        )

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        inputs: Dict[str, torch.Tensor] = {name: x for name in self.tasks + ["shared"]}
        out: Optional[Dict[str, torch.Tensor]] = None
        for layer in self.levels:
            out = layer(inputs)
            inputs = {name: out[name] for name in self.tasks}
            if "shared" in out:
                inputs["shared"] = out["shared"]
        assert out is not None
        return {t: out[t] for t in self.tasks}


@dataclass
class MMoEOptions(MLPOptions):
    """MMoE options of a model config (flat ``model.params`` keys).

    Args:
        num_experts: shared experts.
        expert_hidden: widths of each expert MLP.
        activation, dropout: expert MLP options (:class:`~recsys.modules.mlp.MLPOptions`).
    """

    num_experts: Width = 4
    expert_hidden: List[Width] = field(default_factory=lambda: [256, 128])


@dataclass
class PLEOptions(MLPOptions):
    """PLE options of a model config (flat ``model.params`` keys).

    Args:
        levels: extraction levels (1 = CGC).
        specific_experts: task-specific experts per task and level.
        shared_experts: shared experts per level (0: no shared experts).
        expert_hidden: widths of each expert MLP.
        activation, dropout: expert MLP options (:class:`~recsys.modules.mlp.MLPOptions`).
    """

    levels: PositiveInt = 2
    specific_experts: PositiveInt = 1
    shared_experts: NonNegativeInt = 1
    expert_hidden: List[Width] = field(default_factory=lambda: [256, 128])


# the multi-task expert backbones a model may choose by name: ``EXPERT_BACKBONES[name](in_dim, tasks, config)``
# with a config that has the backbone's options (MMoEOptions, PLEOptions); each maps [B, D] -> {task: [B, H]}
EXPERT_BACKBONES: Dict[str, Callable[[int, Sequence[str], Any], Union[MMoE, PLE]]] = {
    "mmoe": MMoE.from_options,
    "ple": PLE.from_options,
}
