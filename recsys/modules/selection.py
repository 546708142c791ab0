"""SSIM's adaptive selection network: which instances are shared by every scenario.

From "Scenario Shared Instance Modeling for Click-through Rate Prediction" (SSIM, KDD 2025): an MLP over the
instance embedding with one head per scenario gives each instance a logit ``m`` (the head of the instance's own
scenario); ``p = sigmoid(T * m)`` with a temperature ``T`` annealed upwards during the search, and the hard mask
``g = STE(relu(p - eps))`` is 1 (shared) where ``p > eps`` and 0 otherwise. The straight-through estimator
passes the gradient of ``g`` back unchanged but clamped to [-1, 1], then through the ReLU.

Shapes: B batch, E instance-embedding width, S scenarios.
"""

from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from recsys.modules.mlp import MLP


class StraightThroughStep(torch.autograd.Function):
    """Forward ``1[x > 0]`` (a hard 0/1 mask); backward the incoming gradient clamped to [-1, 1]."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.clamp(-1.0, 1.0)


def hard_mask(p: torch.Tensor, eps: float) -> torch.Tensor:
    """SSIM's mask ``g = STE(relu(p - eps))``: exactly 0 or 1 forward; gradient 1 (clamped) where ``p > eps``."""
    return StraightThroughStep.apply(torch.relu(p - eps))


def kl_to_all_shared(p: torch.Tensor, row_weight: torch.Tensor, floor: float = 1e-6) -> torch.Tensor:
    """``D_KL(1 || G)``: the KL divergence of the all-shared target from each instance's selection distribution
    ``Bernoulli(p)``, i.e. ``-log p``, averaged over the rows with positive weight. It pushes instances towards
    being shared; ``floor`` keeps ``log`` finite."""
    w = (row_weight > 0).to(p.dtype)
    return (-torch.log(p.clamp_min(floor)) * w).sum() / w.sum().clamp_min(1.0)


def share_weights(mask: torch.Tensor, scenario: torch.Tensor, num_scenarios: int) -> torch.Tensor:
    """[B, S] loss weights of the scenario towers per instance: a non-shared instance (mask 0) trains its own
    scenario's tower only, a shared one (mask 1) every tower equally: ``(1 - g) onehot(s) + g / S``. Rows sum to
    one whatever the mask; gradient flows to ``mask``."""
    own = torch.nn.functional.one_hot(scenario, num_scenarios).to(mask.dtype)
    g = mask.unsqueeze(1)
    return (1.0 - g) * own + g / num_scenarios


class SelectionNet(nn.Module):
    """The selection network: MLP over the instance embedding, a head per scenario, annealed temperature.

    Args:
        in_dim: E.
        num_scenarios: S (one head each; an instance uses the head of its own scenario).
        hidden: MLP widths.
        eps: mask threshold on ``p``.
        temperature_start, temperature_end: T goes geometrically from start to end over ``anneal_steps``
            training forwards, then stays (the step count is a buffer, so it is checkpointed).
        anneal_steps: length of the annealing.
        init_bias: initial bias of the heads (``p = sigmoid(T * bias)`` at start; positive starts shared).

    Shapes: x [B, E], scenario [B] -> (p [B], g [B]).

    Example::

        sel = SelectionNet(128, num_scenarios=4)
        out = sel(instance.detach(), batch.scenario)
        p, g = out[0], out[1]
    """

    step: torch.Tensor

    def __init__(
        self,
        in_dim: int,
        num_scenarios: int,
        hidden: Sequence[int] = (64,),
        eps: float = 0.5,
        temperature_start: float = 1.0,
        temperature_end: float = 10.0,
        anneal_steps: int = 1000,
        init_bias: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0.0 < eps < 1.0:
            raise ValueError(f"eps must be in (0, 1), got {eps}")
        if temperature_start <= 0 or temperature_end <= 0 or anneal_steps < 1:
            raise ValueError("temperatures must be > 0 and anneal_steps >= 1")
        self.mlp = MLP(in_dim, list(hidden))
        self.heads = nn.Linear(self.mlp.output_dim, num_scenarios)
        nn.init.constant_(self.heads.bias, init_bias)
        self.eps = eps
        self.t0, self.t1, self.anneal_steps = temperature_start, temperature_end, anneal_steps
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        self._last: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

    def temperature(self) -> torch.Tensor:
        frac = (self.step.to(torch.float32) / self.anneal_steps).clamp(max=1.0)
        return self.t0 * (self.t1 / self.t0) ** frac

    def logits(self, x: torch.Tensor, scenario: torch.Tensor) -> torch.Tensor:
        """m [B]: the own-scenario head's logit."""
        return self.heads(self.mlp(x)).gather(1, scenario.unsqueeze(1)).squeeze(1)

    def scores(self, x: torch.Tensor, scenario: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(m, p, g) without advancing the schedule: the logit (which ranks instances even where ``p``
        saturates at 1), the probability and the hard mask."""
        m = self.logits(x, scenario)
        p = torch.sigmoid(self.temperature() * m)
        return m, p, hard_mask(p, self.eps)

    def forward(self, x: torch.Tensor, scenario: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        p = torch.sigmoid(self.temperature() * self.logits(x, scenario))
        g = hard_mask(p, self.eps)
        if self.training:
            self.step += 1
        self._last = (p.detach(), g.detach())
        return p, g

    def tensorboard_stats(self) -> Dict[str, torch.Tensor]:
        if self._last is None:
            return {}
        p, g = self._last
        return {
            "ssim/shared_ratio": g.mean(),
            "ssim/mean_p": p.mean(),
            "ssim/temperature": self.temperature(),
            "ssim/p": p,
        }
