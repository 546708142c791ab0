"""Multi-scenario blocks: per-scenario towers, STAR's partitioned normalisation and star-topology layers, HMoE's
label-space mixing.

Every block here computes all S scenario *views* of every row at once (what the row would get from each
scenario's parameters), so a model can pick the row's own scenario for prediction and SSIM can train shared
instances on every scenario's view.

* :class:`ScenarioMLP` - one MLP per scenario (the towers of MT-S models), batched as one einsum per layer.
* :class:`PartitionedNorm`, :class:`StarLinear`, :class:`StarMLP` - Sheng et al., "One Model to Serve All: Star
  Topology Adaptive Recommender for Multi-Domain CTR Prediction", CIKM 2021 (arXiv:2101.11427).
* :class:`LabelSpaceMixer` - Li et al., "Improving Multi-Scenario Learning to Rank in E-commerce by Exploiting
  Task Relationships in the Label Space", CIKM 2020 (HMoE).

Shapes: B batch, S scenarios, D input width, H hidden width, O outputs.
"""

import math
from typing import Dict, Optional, Sequence, Type

import torch
import torch.nn.functional as F
from torch import nn

from recsys.modules.mlp import mlp_layers


def select_scenario(views: torch.Tensor, scenario: torch.Tensor) -> torch.Tensor:
    """Each row's own scenario column: [B, S] and [B] -> [B]."""
    return views.gather(1, scenario.unsqueeze(1)).squeeze(1)


def _uniform_(t: torch.Tensor, fan_in: int) -> torch.Tensor:
    bound = 1.0 / math.sqrt(max(fan_in, 1))
    return nn.init.uniform_(t, -bound, bound)


class ScenarioLinear(nn.Module):
    """S independent linear maps: [B, D] (the same input for every scenario) or [B, S, D] -> [B, S, O].

    Initialised like ``nn.Linear`` (uniform in +-1/sqrt(D)), independently per scenario.
    """

    def __init__(self, in_dim: int, out_dim: int, num_scenarios: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(_uniform_(torch.empty(num_scenarios, in_dim, out_dim), in_dim))
        self.bias = nn.Parameter(_uniform_(torch.empty(num_scenarios, out_dim), in_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            return torch.einsum("bi,sio->bso", x, self.weight) + self.bias
        return torch.einsum("bsi,sio->bso", x, self.weight) + self.bias


class ScenarioMLP(nn.Module):
    """One MLP per scenario (``Linear -> [norm] -> activation -> [dropout]`` blocks and an optional linear output),
    all evaluated on every row: :func:`~recsys.modules.mlp.mlp_layers` over per-scenario linear layers.

    Args:
        in_dim: input width D.
        num_scenarios: S.
        hidden: hidden widths of each scenario's MLP (may be empty).
        output_dim: width O of a final linear layer without activation (None: the last hidden layer is the output).
        activation, dropout: as in :class:`~recsys.modules.mlp.MLP`.
        norm: ``none`` or ``layer`` (batch statistics per scenario are :class:`PartitionedNorm`'s job).
        layer: the linear layer, built as ``layer(in, out, num_scenarios)``: :class:`ScenarioLinear` (independent
            weights per scenario) or :class:`StarLinear` (shared times per-scenario weights).

    Shapes: [B, D] (``ScenarioLinear`` only) or [B, S, D] -> [B, S, O].

    Example::

        towers = ScenarioMLP(64, num_scenarios=3, hidden=[32], output_dim=2)
        views = towers(x)                      # [B, 3, 2]: every scenario's tower on every row
        own = select_scenario(views, batch.scenario)   # [B, 2]
    """

    def __init__(
        self,
        in_dim: int,
        num_scenarios: int,
        hidden: Sequence[int],
        output_dim: Optional[int] = None,
        activation: str = "relu",
        dropout: float = 0.0,
        norm: str = "none",
        layer: Type[nn.Module] = ScenarioLinear,
    ) -> None:
        super().__init__()
        if norm == "batch":
            raise ValueError("batch norm of scenario views is not defined; use PartitionedNorm")
        blocks, output, width = mlp_layers(
            in_dim, hidden, output_dim, activation, dropout, norm, linear=lambda i, o: layer(i, o, num_scenarios)
        )
        layers = [m for block in blocks for m in block] + ([output] if output is not None else [])
        if not layers:
            raise ValueError("ScenarioMLP needs hidden layers or an output_dim")
        self.layers = nn.ModuleList(layers)
        self.num_scenarios = num_scenarios
        self.output_dim = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class PartitionedNorm(nn.Module):
    """STAR's partitioned normalisation: batch normalisation with a shared and a per-scenario affine transform
    and per-scenario statistics.

    ``z' = (gamma * gamma_s) * (z - mu_s) / sqrt(var_s + eps) + (beta + beta_s)``

    In training ``mu_s, var_s`` are the moments of the batch's rows of scenario s (rows with zero weight, i.e.
    padding, excluded; a scenario with fewer than 2 rows in the batch uses its running statistics) and each
    scenario's running statistics are updated from them; in evaluation every scenario uses its own running
    statistics. The view of scenario s normalises every row with scenario s's statistics and affine parameters.

    Args:
        dim: feature width D.
        num_scenarios: S.
        eps: added to the variance.
        momentum: running-statistics update rate (as ``nn.BatchNorm1d``).

    Shapes: x [B, D], scenario [B], row_weight [B] -> [B, S, D].

    Example::

        pn = PartitionedNorm(64, num_scenarios=3)
        views = pn(x, batch.scenario, batch.weights)       # [B, 3, 64]
    """

    running_mean: torch.Tensor
    running_var: torch.Tensor

    def __init__(self, dim: int, num_scenarios: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.num_scenarios = num_scenarios
        self.eps = eps
        self.momentum = momentum
        self.gamma = nn.Parameter(torch.ones(dim))
        self.beta = nn.Parameter(torch.zeros(dim))
        self.gamma_s = nn.Parameter(torch.ones(num_scenarios, dim))
        self.beta_s = nn.Parameter(torch.zeros(num_scenarios, dim))
        self.register_buffer("running_mean", torch.zeros(num_scenarios, dim))
        self.register_buffer("running_var", torch.ones(num_scenarios, dim))

    def statistics(self, x: torch.Tensor, scenario: torch.Tensor, row_weight: torch.Tensor):
        """(mean [S, D], var [S, D]) used for this forward; updates the running statistics in training."""
        if not self.training:
            return self.running_mean, self.running_var
        member = F.one_hot(scenario, self.num_scenarios).to(x.dtype) * (row_weight > 0).to(x.dtype).unsqueeze(1)
        n = member.sum(dim=0)  # [S]
        denom = n.clamp_min(1.0).unsqueeze(1)
        mean = member.t() @ x / denom
        centred = x - mean.index_select(0, scenario)
        var = member.t() @ (centred * centred) / denom
        enough = (n >= 2).unsqueeze(1)
        with torch.no_grad():
            unbiased = var * (n / (n - 1).clamp_min(1.0)).unsqueeze(1)
            m = self.momentum * enough.to(x.dtype)
            self.running_mean.mul_(1 - m).add_(m * mean.detach())
            self.running_var.mul_(1 - m).add_(m * unbiased)
        return torch.where(enough, mean, self.running_mean), torch.where(enough, var, self.running_var)

    def forward(self, x: torch.Tensor, scenario: torch.Tensor, row_weight: torch.Tensor) -> torch.Tensor:
        mean, var = self.statistics(x, scenario, row_weight)
        normed = (x.unsqueeze(1) - mean.unsqueeze(0)) * torch.rsqrt(var.unsqueeze(0) + self.eps)
        return normed * (self.gamma * self.gamma_s).unsqueeze(0) + (self.beta + self.beta_s).unsqueeze(0)


class StarLinear(nn.Module):
    """STAR's star-topology fully connected layer: scenario s uses ``W_shared * W_s`` (element-wise) and
    ``b_shared + b_s``.

    The shared weights start like ``nn.Linear``'s; the per-scenario weights start at one and the per-scenario
    biases at zero, so every scenario starts from the shared layer.

    Shapes: [B, S, D] (row views per scenario) -> [B, S, O].
    """

    def __init__(self, in_dim: int, out_dim: int, num_scenarios: int) -> None:
        super().__init__()
        self.shared_weight = nn.Parameter(_uniform_(torch.empty(in_dim, out_dim), in_dim))
        self.shared_bias = nn.Parameter(_uniform_(torch.empty(out_dim), in_dim))
        self.scenario_weight = nn.Parameter(torch.ones(num_scenarios, in_dim, out_dim))
        self.scenario_bias = nn.Parameter(torch.zeros(num_scenarios, out_dim))

    def effective_weight(self) -> torch.Tensor:
        """[S, D, O]: each scenario's weight matrix."""
        return self.shared_weight.unsqueeze(0) * self.scenario_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bsi,sio->bso", x, self.effective_weight()) + self.shared_bias + self.scenario_bias


class StarMLP(ScenarioMLP):
    """STAR's star-topology FC network: :class:`ScenarioMLP` over :class:`StarLinear` layers, with an output
    layer.

    Shapes: [B, S, D] -> [B, S, O].

    Example::

        star = StarMLP(64, [128, 64], num_scenarios=3, output_dim=1)
        logits = star(pn(x, batch.scenario, batch.weights)).squeeze(-1)     # [B, 3]
    """

    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int],
        num_scenarios: int,
        output_dim: int,
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__(in_dim, num_scenarios, hidden, output_dim, activation, dropout, layer=StarLinear)


class LabelSpaceMixer(nn.Module):
    """HMoE's label-space combination of scenario predictions.

    The prediction for scenario i is ``w_ii * t_i + sum_{j != i} w_ij * stopgrad(t_j)``, where ``t_j`` is
    scenario j's tower output and ``w_i = softmax(G_i x)`` comes from a gate on the input: scenario i learns how
    much to trust the other scenarios' predictions without changing their towers.

    Args:
        in_dim: gate input width D.
        num_scenarios: S.

    Shapes: x [B, D], towers [B, S, O] -> [B, S, O] (row views: what each scenario predicts for the row).

    Example::

        mixer = LabelSpaceMixer(64, num_scenarios=3)
        views = mixer(x, towers)       # towers: [B, 3, 1]
    """

    eye: torch.Tensor

    def __init__(self, in_dim: int, num_scenarios: int) -> None:
        super().__init__()
        self.num_scenarios = num_scenarios
        self.gate = nn.Linear(in_dim, num_scenarios * num_scenarios)
        self.register_buffer("eye", torch.eye(num_scenarios), persistent=False)
        self._last: Optional[torch.Tensor] = None

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """[B, S, S]: row i holds scenario i's softmax weights over the S towers."""
        s = self.num_scenarios
        return torch.softmax(self.gate(x).view(-1, s, s), dim=-1)

    def forward(self, x: torch.Tensor, towers: torch.Tensor) -> torch.Tensor:
        w = self.weights(x)
        self._last = w.detach()
        own = self.eye.view(1, self.num_scenarios, self.num_scenarios, 1)
        # [B, i, j, O]: tower j as seen by scenario i - with gradient only on the diagonal j == i
        seen = own * towers.unsqueeze(1) + (1 - own) * towers.detach().unsqueeze(1)
        return torch.einsum("bij,bijo->bio", w, seen)

    def tensorboard_stats(self) -> Dict[str, torch.Tensor]:
        if self._last is None:
            return {}
        return {"label_mix/own_weight": torch.diagonal(self._last.mean(dim=0))}
