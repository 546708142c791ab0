"""Calibration4CVR: the CTR network calibrates the CVR network at the neuron level.

After the industry write-up "CTR calibrates CVR" (Calibration4CVR): CTR and CVR share their embeddings but not
their layers. A CTR network and a CVR network run side by side; at a configurable hidden layer i the CTR
network's hidden output calibrates the CVR network's with one of four structures
(:mod:`recsys.modules.cvr_calibration`): (1) a two-layer MLP of the CTR hidden output concatenated with CVR layer
i; (2) a one-layer MLP scaled by a learned factor in (0, 1), then concatenated; (3) squeeze-and-excitation over
the CTR representation, whose sigmoid vector multiplies the CVR hidden output; (4) as 3, concatenated with the
original CVR representation. Position/bias features go through a CTR-Pos-Net and a CVR-Pos-Net whose outputs add
to the logits; optionally the CTR-Pos-Net's hidden layer calibrates the CVR-Pos-Net's with the same structure.

Training options the write-up reports as mattering: the CTR:CVR sample ratio (``ctr_cvr_ratio``, 1:1 best there;
see :func:`~recsys.modules.multitask.ctr_sample_weights`) and weakening the CVR gradient into the shared
embeddings (``cvr_embedding_grad``). The CVR loss is the conditional one (clicked impressions), as the schema's
``depends_on`` says. docs/cvr.md explains the interpretation.
"""

import functools
from dataclasses import dataclass, field
from typing import Dict, List, Literal, Optional

import torch

from recsys.config import NonNegativeInt, PositiveInt, Probability, Width
from recsys.data.batch import Batch
from recsys.errors import ConfigError
from recsys.models.base import register_model
from recsys.models.funnel import FunnelModel, SharedInputFunnelOptions, split_bias_features
from recsys.modules.cvr_calibration import CalibratedPair
from recsys.modules.multitask import GradScale
from recsys.modules.sparse import FeatureInput, FeatureOptions
from recsys.schema import Schema


@dataclass
class Calibration4CVRConfig(SharedInputFunnelOptions, FeatureOptions):
    """Options of :class:`Calibration4CVR`.

    Args:
        structure: ``ctr_mlp`` (1), ``ctr_scaled`` (2), ``cvr_se`` (3) or ``cvr_se_concat`` (4).
        ctr_hidden, cvr_hidden: hidden widths of the CTR and CVR networks.
        calibrate_layer: 0-based index of the hidden layer whose CTR output calibrates the CVR output at the same
            index (both networks need more layers than that).
        calibration_dim: width of the transformed CTR vector of structures 1 and 2 (default: the CVR layer's).
        se_reduction: bottleneck ratio of the squeeze-and-excitation (structures 3 and 4).
        ctr_grad_from_cvr: scale in [0, 1] of the CVR loss' gradient into the CTR network through the calibration.
        bias_features: sparse features of the Pos-Nets; ``[]``: no Pos-Nets.
        pos_hidden: hidden widths of the CTR-Pos-Net and the CVR-Pos-Net.
        pos_calibration: calibrate the CVR-Pos-Net's last hidden layer from the CTR-Pos-Net's (same structure).
        features: sparse features of the main networks (default: all but ``bias_features``).
        use_dense: feed dense features to the main networks.
        extra_hidden: widths of the towers of tasks outside the funnel.
        activation, dropout: MLP options.
        cvr_task: the funnel's conversion task when the schema has several.
        cvr_embedding_grad: scale in [0, 1] of the gradient the CVR side sends into the shared embeddings.
        ctr_cvr_ratio: non-clicked impressions kept for the CTR loss per clicked one; ``None`` keeps all.
    """

    structure: Literal["ctr_mlp", "ctr_scaled", "cvr_se", "cvr_se_concat"] = "cvr_se"
    ctr_hidden: List[Width] = field(default_factory=lambda: [256, 128, 64])
    cvr_hidden: List[Width] = field(default_factory=lambda: [256, 128, 64])
    calibrate_layer: NonNegativeInt = 1
    calibration_dim: Optional[Width] = None
    se_reduction: PositiveInt = 4
    ctr_grad_from_cvr: Probability = 1.0
    bias_features: List[str] = field(default_factory=lambda: ["position"])
    pos_hidden: List[Width] = field(default_factory=lambda: [16])
    pos_calibration: bool = True


@register_model("calibration4cvr")
class Calibration4CVR(FunnelModel):
    """CTR and CVR networks over shared embeddings, the CVR network calibrated by the CTR network.

    Shapes: B batch, F main features, P bias features, D embedding dim, Dd dense.
    x = [B, F * D + Dd]; (ctr, cvr) = CalibratedPair(x, grad_scaled(x)) -> ([B], [B]);
    p = [B, P * D]; (ctr_pos, cvr_pos) = CalibratedPair(p, grad_scaled(p)); logits = main + pos.

    Example::

        model = Calibration4CVR(schema, Calibration4CVRConfig(structure="ctr_scaled", calibrate_layer=0))
        out = model(batch)                          # {"ctr": [B], "cvr": [B], ...}
        model.main.calibration.scale                # the learned factor in (0, 1)
    """

    Config = Calibration4CVRConfig

    def __init__(self, schema: Schema, config: Calibration4CVRConfig) -> None:
        super().__init__(schema, config)
        depth = min(len(config.ctr_hidden), len(config.cvr_hidden))
        if not 0 <= config.calibrate_layer < depth:
            raise ConfigError(
                f"model.params.calibrate_layer must be in [0, {depth}) for ctr_hidden "
                f"{config.ctr_hidden} and cvr_hidden {config.cvr_hidden}, got {config.calibrate_layer}"
            )
        if config.bias_features and not config.pos_hidden:
            raise ConfigError("model.params.pos_hidden needs at least one layer when bias_features are given")
        main, self.bias_features = split_bias_features(schema, config.features, config.bias_features, "calibration4cvr")
        self.sparse_arch = FeatureInput(schema, main, config.use_dense)
        width = self.sparse_arch.width
        self.cvr_grad = GradScale(config.cvr_embedding_grad)
        pair = functools.partial(
            CalibratedPair,
            structure=config.structure,
            calibration_dim=config.calibration_dim,
            se_reduction=config.se_reduction,
            ctr_grad=config.ctr_grad_from_cvr,
            activation=config.activation,
        )
        self.main = pair(
            width, width, config.ctr_hidden, config.cvr_hidden, config.calibrate_layer, dropout=config.dropout
        )
        self.pos: Optional[CalibratedPair] = None
        if self.bias_features:
            p = self.sparse_arch.output_dim(self.bias_features)
            layer = len(config.pos_hidden) - 1 if config.pos_calibration else None
            self.pos = pair(p, p, config.pos_hidden, config.pos_hidden, layer)
        self.extra = self.extra_towers(width, config)

    def forward(self, batch: Batch) -> Dict[str, torch.Tensor]:
        x, emb = self.sparse_arch.read(batch)
        main = self.main(x, self.cvr_grad(x))
        ctr, cvr = main[0], main[1]
        if self.pos is not None:
            b = emb.concat(self.bias_features)
            pos = self.pos(b, self.cvr_grad(b))
            ctr, cvr = ctr + pos[0], cvr + pos[1]
        return self.funnel_outputs(ctr, cvr, x)
