"""Neuron-level calibration of a CVR network by a CTR network (Calibration4CVR).

Instead of sharing whole layers between CTR and CVR (shared bottom, experts), the CTR network's hidden output
at layer i calibrates the CVR network's hidden output at layer i with one of four structures:

1. ``ctr_mlp`` (:class:`CTRCalibration`): a two-layer MLP transforms the CTR hidden output, which is
   concatenated with the CVR hidden output.
2. ``ctr_scaled`` (:class:`ScaledCTRCalibration`): a one-layer MLP transforms it and a learned scalar in (0, 1)
   scales it before the concatenation.
3. ``cvr_se`` (:class:`SECalibration`): squeeze-and-excitation over the CTR hidden output yields a sigmoid vector
   that multiplies the CVR hidden output element-wise.
4. ``cvr_se_concat`` (:class:`SEConcatCalibration`): as 3, concatenated with the original CVR hidden output.

Every structure maps ``(h_ctr [B, Dc], h_cvr [B, Dv]) -> [B, output_dim]``, the input of the CVR network's next
layer. :class:`CalibratedPair` builds a CTR tower and a CVR tower with one of them between layer i and i + 1.
Shapes: B batch, Dc / Dv widths of the CTR / CVR hidden layer, C calibration width.
"""

from typing import Dict, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from recsys.modules.calibration import gate_output
from recsys.modules.mlp import MLP, make_activation
from recsys.modules.multitask import GradScale

STRUCTURES = ("ctr_mlp", "ctr_scaled", "cvr_se", "cvr_se_concat")


class CTRCalibration(nn.Module):
    """Structure 1: ``concat[h_cvr, MLP2(h_ctr)]``.

    Args:
        ctr_dim, cvr_dim: widths Dc, Dv.
        calibration_dim: width C of the transformed CTR vector (default Dv).
        activation: of the MLP's hidden layer.

    Shapes: ([B, Dc], [B, Dv]) -> [B, Dv + C].

    Example::

        cal = CTRCalibration(64, 32)
        z = cal(h_ctr, h_cvr)       # [B, 64]
    """

    def __init__(
        self, ctr_dim: int, cvr_dim: int, calibration_dim: Optional[int] = None, activation: str = "relu"
    ) -> None:
        super().__init__()
        width = calibration_dim or cvr_dim
        self.transform = MLP(ctr_dim, [width], output_dim=width, activation=activation)
        self.output_dim = cvr_dim + width

    def forward(self, h_ctr: torch.Tensor, h_cvr: torch.Tensor) -> torch.Tensor:
        return torch.cat([h_cvr, self.transform(h_ctr)], dim=1)


class ScaledCTRCalibration(nn.Module):
    """Structure 2: ``concat[h_cvr, alpha * act(W h_ctr + b)]`` with a learned ``alpha = sigmoid(a)`` in (0, 1).

    Args:
        ctr_dim, cvr_dim: widths Dc, Dv.
        calibration_dim: width C (default Dv).
        activation: after the linear layer.
        init_scale: alpha at initialisation, in (0, 1).

    Shapes: ([B, Dc], [B, Dv]) -> [B, Dv + C].
    """

    def __init__(
        self,
        ctr_dim: int,
        cvr_dim: int,
        calibration_dim: Optional[int] = None,
        activation: str = "relu",
        init_scale: float = 0.5,
    ) -> None:
        super().__init__()
        if not 0.0 < init_scale < 1.0:
            raise ValueError(f"init_scale must be in (0, 1), got {init_scale}")
        width = calibration_dim or cvr_dim
        self.transform = nn.Sequential(nn.Linear(ctr_dim, width), make_activation(activation))
        self.scale_logit = nn.Parameter(torch.logit(torch.tensor(float(init_scale))))
        self.output_dim = cvr_dim + width

    @property
    def scale(self) -> torch.Tensor:
        """The scaling factor alpha, a scalar in (0, 1)."""
        return torch.sigmoid(self.scale_logit)

    def forward(self, h_ctr: torch.Tensor, h_cvr: torch.Tensor) -> torch.Tensor:
        return torch.cat([h_cvr, self.scale * self.transform(h_ctr)], dim=1)

    def tensorboard_stats(self) -> Dict[str, torch.Tensor]:
        return {"calibration_scale": self.scale.detach()}


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation weights from a vector (Hu et al., CVPR 2018; the squeeze of a [B, D] vector is the
    vector itself): ``sigmoid(W2 act(W1 x))``, W1 reducing D by ``reduction``.

    Shapes: [B, D_in] -> [B, D_out] in (0, 1).
    """

    def __init__(self, in_dim: int, out_dim: int, reduction: int = 4, activation: str = "relu") -> None:
        super().__init__()
        if reduction < 1:
            raise ValueError(f"reduction must be >= 1, got {reduction}")
        hidden = max(1, in_dim // reduction)
        self.squeeze = nn.Sequential(nn.Linear(in_dim, hidden), make_activation(activation))
        self.excite = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gate_output("sigmoid", self.excite(self.squeeze(x)))


class SECalibration(nn.Module):
    """Structure 3: ``h_cvr * SE(h_ctr)``: the CTR representation gates every CVR hidden unit per sample.

    Args:
        ctr_dim, cvr_dim: widths Dc, Dv.
        reduction: SE bottleneck ratio.
        activation: of the SE bottleneck.

    Shapes: ([B, Dc], [B, Dv]) -> [B, Dv].
    """

    def __init__(self, ctr_dim: int, cvr_dim: int, reduction: int = 4, activation: str = "relu") -> None:
        super().__init__()
        self.se = SqueezeExcitation(ctr_dim, cvr_dim, reduction, activation)
        self.output_dim = cvr_dim
        self._last_gate: Optional[torch.Tensor] = None

    def gate(self, h_ctr: torch.Tensor) -> torch.Tensor:
        """The sigmoid vector [B, Dv] multiplying the CVR hidden output."""
        return self.se(h_ctr)

    def forward(self, h_ctr: torch.Tensor, h_cvr: torch.Tensor) -> torch.Tensor:
        g = self.gate(h_ctr)
        self._last_gate = g.detach()
        return h_cvr * g

    def tensorboard_stats(self) -> Dict[str, torch.Tensor]:
        if self._last_gate is None:
            return {}
        return {"gate_mean": self._last_gate.mean(), "gate_per_unit": self._last_gate.mean(dim=0)}


class SEConcatCalibration(SECalibration):
    """Structure 4: ``concat[h_cvr * SE(h_ctr), h_cvr]``.

    Shapes: ([B, Dc], [B, Dv]) -> [B, 2 Dv].
    """

    def __init__(self, ctr_dim: int, cvr_dim: int, reduction: int = 4, activation: str = "relu") -> None:
        super().__init__(ctr_dim, cvr_dim, reduction, activation)
        self.output_dim = 2 * cvr_dim

    def forward(self, h_ctr: torch.Tensor, h_cvr: torch.Tensor) -> torch.Tensor:
        return torch.cat([super().forward(h_ctr, h_cvr), h_cvr], dim=1)


# the calibration structures; each has ``output_dim``
Calibration = Union["CTRCalibration", "ScaledCTRCalibration", "SECalibration", "SEConcatCalibration"]


def make_calibration(
    structure: str,
    ctr_dim: int,
    cvr_dim: int,
    calibration_dim: Optional[int] = None,
    se_reduction: int = 4,
    activation: str = "relu",
) -> Calibration:
    """One of :data:`STRUCTURES`; the module has ``output_dim``."""
    if structure == "ctr_mlp":
        return CTRCalibration(ctr_dim, cvr_dim, calibration_dim, activation)
    if structure == "ctr_scaled":
        return ScaledCTRCalibration(ctr_dim, cvr_dim, calibration_dim, activation)
    if structure == "cvr_se":
        return SECalibration(ctr_dim, cvr_dim, se_reduction, activation)
    if structure == "cvr_se_concat":
        return SEConcatCalibration(ctr_dim, cvr_dim, se_reduction, activation)
    raise ValueError(f"calibration structure '{structure}' is not one of {STRUCTURES}")


class CalibratedPair(nn.Module):
    """A CTR tower and a CVR tower; the CVR tower's hidden layer ``layer`` is calibrated by the CTR tower's.

    Each tower is ``Linear -> activation`` hidden layers and a linear output. The CTR hidden output at ``layer``
    (0-based) passes through :class:`GradScale` (``ctr_grad``: how much of the CVR loss' gradient reaches the CTR
    tower through the calibration) into the calibration structure, whose output replaces the CVR hidden output
    at ``layer`` as the input of the CVR tower's next layer (or of its output layer).

    Args:
        ctr_in, cvr_in: input widths of the two towers.
        ctr_hidden, cvr_hidden: hidden widths; both need more than ``layer`` layers.
        layer: the calibrated layer index; ``None`` builds two independent towers.
        structure: one of :data:`STRUCTURES`.
        calibration_dim, se_reduction: structure options (see :func:`make_calibration`).
        ctr_grad: gradient scale from the calibration into the CTR tower, in [0, 1].
        activation, dropout: tower MLP options.

    Shapes: ([B, ctr_in], [B, cvr_in]) -> (ctr logit [B], cvr logit [B]).

    Example::

        pair = CalibratedPair(64, 64, [128, 64], [128, 64], layer=0, structure="cvr_se")
        ctr_logit, cvr_logit = pair(x, x)
    """

    def __init__(
        self,
        ctr_in: int,
        cvr_in: int,
        ctr_hidden: Sequence[int],
        cvr_hidden: Sequence[int],
        layer: Optional[int],
        structure: str = "cvr_se",
        calibration_dim: Optional[int] = None,
        se_reduction: int = 4,
        ctr_grad: float = 1.0,
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if layer is not None and not 0 <= layer < min(len(ctr_hidden), len(cvr_hidden)):
            raise ValueError(
                f"calibrated layer {layer} needs both towers to have more than {layer} hidden layers "
                f"(CTR {list(ctr_hidden)}, CVR {list(cvr_hidden)})"
            )
        split = len(ctr_hidden) if layer is None else layer + 1
        cut = len(cvr_hidden) if layer is None else layer + 1
        self.layer = layer
        self.ctr_lower = MLP(ctr_in, ctr_hidden[:split], activation=activation, dropout=dropout)
        self.ctr_upper = MLP(
            self.ctr_lower.output_dim, ctr_hidden[split:], output_dim=1, activation=activation, dropout=dropout
        )
        self.cvr_lower = MLP(cvr_in, cvr_hidden[:cut], activation=activation, dropout=dropout)
        self.calibration: Optional[Calibration] = None
        self.ctr_grad: Optional[GradScale] = None
        width = self.cvr_lower.output_dim
        if layer is not None:
            self.ctr_grad = GradScale(ctr_grad)
            self.calibration = make_calibration(
                structure, self.ctr_lower.output_dim, width, calibration_dim, se_reduction, activation
            )
            width = self.calibration.output_dim
        self.cvr_upper = MLP(width, cvr_hidden[cut:], output_dim=1, activation=activation, dropout=dropout)

    def forward(self, x_ctr: torch.Tensor, x_cvr: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        h_ctr = self.ctr_lower(x_ctr)
        h_cvr = self.cvr_lower(x_cvr)
        if self.calibration is not None and self.ctr_grad is not None:
            h_cvr = self.calibration(self.ctr_grad(h_ctr), h_cvr)
        return self.ctr_upper(h_ctr).squeeze(-1), self.cvr_upper(h_cvr).squeeze(-1)
