"""SSIM: scenario shared instance modeling.

"Scenario Shared Instance Modeling for Click-through Rate Prediction", KDD 2025 (Shenzhen University, FiT
Tencent, McGill University).

SSIM moves the shared-versus-specific question of multi-scenario learning from the architecture to the data: an
instance selected as *shared* trains every scenario's tower (its loss is averaged over all S towers), any other
instance trains only its own scenario's tower. Both wrappers here take any multi-scenario backbone
(:class:`~recsys.models.multi_scenario.MultiScenarioModel`: ``dnn_mts``, ``deepfm_mts``, ``dcn_mts``, ``star``,
``hmoe``) and predict with its own-scenario outputs; they only change the loss.

* ``ssim_search`` - the search phase: an adaptive selection network
  (:class:`~recsys.modules.selection.SelectionNet`) reads the backbone's instance embedding (detached: the
  selection does not shape the representation) and gives each instance a hard straight-through mask ``g``;
  per row the loss is ``(1 - g) * L(own tower) + g * mean_s L(tower s)`` plus ``kl_weight * D_KL(1 || G)``
  (``-log p``, pushing towards sharing). The selection network has its own optimizer and learning rate.
* ``ssim`` - retraining with a saved shared-instance set: the flags come from the data (``batch.extras``,
  joined by row id from the Parquet that ``recsys ssim export`` writes; see ``data.side_columns``), so the set is
  model-free: search with one backbone, retrain any other from scratch.

Per-scenario views and the mask travel from ``forward`` to the loss hooks in the outputs dict under keys that
are not task names (``<task>/views``, ``ssim/p``, ``ssim/mask``).
"""

import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, Tuple

import torch

from recsys.config import (
    Fraction,
    ModelConfig,
    NonNegativeFloat,
    OptimizerConfig,
    PositiveFloat,
    PositiveInt,
    Width,
)
from recsys.data.batch import Batch
from recsys.errors import ConfigError
from recsys.models.base import (
    OptimizerGroup,
    RankingModel,
    Requirements,
    build_model,
    model_class,
    model_names,
    register_model,
)
from recsys.models.multi_scenario import MultiScenarioModel, own_scenario
from recsys.modules.selection import SelectionNet, kl_to_all_shared, share_weights
from recsys.schema import Schema

log = logging.getLogger(__name__)

VIEWS = "/views"
P_KEY = "ssim/p"
MASK_KEY = "ssim/mask"


def build_backbone(name: str, params: Dict[str, Any], schema: Schema) -> MultiScenarioModel:
    """The multi-scenario model ``name`` with ``params`` (checked against its config dataclass)."""
    if not issubclass(model_class(name), MultiScenarioModel):
        options = [n for n in model_names() if issubclass(model_class(n), MultiScenarioModel)]
        raise ConfigError(
            f"model.params.backbone: '{name}' has no per-scenario towers; SSIM wraps one of {', '.join(options)}"
        )
    model = build_model(ModelConfig(name=name, params=dict(params)), schema, where="model.params.backbone_params")
    assert isinstance(model, MultiScenarioModel)
    return model


class _SSIMWrapper(RankingModel):
    """A multi-scenario backbone whose per-scenario views reach the loss hooks."""

    requirements = Requirements(scenario=True)

    backbone: MultiScenarioModel

    def _wrap(self, name: str, params: Dict[str, Any]) -> None:
        self.backbone = build_backbone(name, params, self.schema)
        self.dependent_loss = self.backbone.dependent_loss

    @property
    def num_scenarios(self) -> int:
        return self.schema.num_scenarios

    def _outputs(self, batch: Batch) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
        views = self.backbone.scenario_views(batch)
        out = own_scenario(views.outputs, batch.scenario, self.tasks)
        for t in self.tasks:
            out[t + VIEWS] = views.outputs[t]
        return out, views.instance

    def _views(self, outputs: Dict[str, torch.Tensor], weights: torch.Tensor):
        return {t: (outputs[t + VIEWS], weights) for t in self.tasks}

    def loss_weights(self, batch: Batch, outputs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return self.backbone.loss_weights(batch, outputs)

    def extra_losses(self, batch: Batch, outputs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return self.backbone.extra_losses(batch, outputs)

    def optimizer_groups(self) -> Dict[str, OptimizerGroup]:
        return self.backbone.optimizer_groups()


@dataclass
class SSIMSearchConfig:
    """Options of :class:`SSIMSearch`.

    Args:
        backbone: registry name of a multi-scenario model.
        backbone_params: its ``model.params``.
        selection_hidden: widths of the selection network's MLP.
        kl_weight: lambda, the weight of ``D_KL(1 || G)`` (larger: more instances shared).
        eps: mask threshold: an instance is shared where ``p > eps``.
        temperature_start, temperature_end, anneal_steps: T is annealed geometrically over the first
            ``anneal_steps`` training steps.
        init_bias: initial bias of the selection heads (``p = sigmoid(T * init_bias)`` at the start).
        mask_optimizer, mask_lr: the selection network's own optimizer and learning rate.
    """

    backbone: str = "dnn_mts"
    backbone_params: Dict[str, Any] = field(default_factory=dict)
    selection_hidden: List[Width] = field(default_factory=lambda: [64])
    kl_weight: NonNegativeFloat = 0.01
    eps: Fraction = 0.5
    temperature_start: PositiveFloat = 1.0
    temperature_end: PositiveFloat = 10.0
    anneal_steps: PositiveInt = 1000
    init_bias: float = 0.5
    mask_optimizer: Literal["adam", "adamw", "adagrad", "sgd"] = "adam"
    mask_lr: PositiveFloat = 1e-3


@register_model("ssim_search")
class SSIMSearch(_SSIMWrapper):
    """SSIM's search phase over a multi-scenario backbone.

    Shapes: views ``{task: [B, S]}``, instance [B, E] -> selection (p [B], g [B]) -> tower weights [B, S].

    Example::

        model = SSIMSearch(schema, SSIMSearchConfig(backbone="dnn_mts", kl_weight=0.01))
        out = model(batch)                    # {"ctr": [B], "ctr/views": [B, S], "ssim/mask": [B], ...}
        m, p, g = model.selection_scores(batch)  # selection logit, probability and hard mask per row
    """

    Config = SSIMSearchConfig
    config: SSIMSearchConfig

    def __init__(self, schema: Schema, config: SSIMSearchConfig) -> None:
        super().__init__(schema, config)
        self._wrap(config.backbone, config.backbone_params)
        self.selection = SelectionNet(
            self.backbone.instance_dim,
            schema.num_scenarios,
            config.selection_hidden,
            eps=config.eps,
            temperature_start=config.temperature_start,
            temperature_end=config.temperature_end,
            anneal_steps=config.anneal_steps,
            init_bias=config.init_bias,
        )

    def forward(self, batch: Batch) -> Dict[str, torch.Tensor]:
        out, instance = self._outputs(batch)
        selected = self.selection(instance.detach(), batch.scenario)
        out[P_KEY] = selected[0]
        out[MASK_KEY] = selected[1]
        return out

    def selection_scores(self, batch: Batch) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(m [B], p [B], g [B]) of every row: the selection logit, probability and hard shared mask."""
        instance = self.backbone.scenario_views(batch).instance
        return self.selection.scores(instance.detach(), batch.scenario)

    def loss_views(self, batch: Batch, outputs: Dict[str, torch.Tensor]):
        return self._views(outputs, share_weights(outputs[MASK_KEY], batch.scenario, self.num_scenarios))

    def extra_losses(self, batch: Batch, outputs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        losses = dict(self.backbone.extra_losses(batch, outputs))
        losses["ssim_kl"] = self.config.kl_weight * kl_to_all_shared(outputs[P_KEY], batch.weights)
        return losses

    def optimizer_groups(self) -> Dict[str, OptimizerGroup]:
        groups = dict(self.backbone.optimizer_groups())
        groups["selection"] = OptimizerGroup(
            list(self.selection.parameters()),
            OptimizerConfig(name=self.config.mask_optimizer, lr=self.config.mask_lr),
        )
        return groups


@dataclass
class SSIMConfig:
    """Options of :class:`SSIM`.

    Args:
        backbone: registry name of a multi-scenario model (trained from scratch).
        backbone_params: its ``model.params``.
        shared_column: the side column holding each row's shared flag (``data.side_columns``; ``recsys ssim
            retrain`` sets both). Without one no instance is shared and the model trains like its backbone.
    """

    backbone: str = "dnn_mts"
    backbone_params: Dict[str, Any] = field(default_factory=dict)
    shared_column: Optional[str] = None


@register_model("ssim")
class SSIM(_SSIMWrapper):
    """Retraining a multi-scenario backbone with a saved shared-instance set.

    Shapes: flags ``batch.extras[shared_column]`` [B] in {0, 1} -> tower weights [B, S].

    Example::

        model = SSIM(schema, SSIMConfig(backbone="star", shared_column="shared"))
        logits = model(batch)      # {"ctr": [B], ...}: the backbone's own-scenario outputs
    """

    Config = SSIMConfig
    config: SSIMConfig

    def __init__(self, schema: Schema, config: SSIMConfig) -> None:
        super().__init__(schema, config)
        self._wrap(config.backbone, config.backbone_params)
        if config.shared_column is None:
            log.warning("ssim: no model.params.shared_column; no instance is shared (the backbone alone)")

    def forward(self, batch: Batch) -> Dict[str, torch.Tensor]:
        return self._outputs(batch)[0]

    def loss_views(self, batch: Batch, outputs: Dict[str, torch.Tensor]):
        if self.config.shared_column is None:
            return {}
        flags = batch.extras[self.config.shared_column]
        return self._views(outputs, share_weights(flags, batch.scenario, self.num_scenarios))
