"""The base of click -> conversion funnel models: ESMM, Calibration4CVR and the single-task baseline.

A funnel model reads its CTR and CVR tasks from the schema (the binary task with ``depends_on`` and its parent,
:func:`~recsys.modules.multitask.funnel_tasks`), may keep the CTR:CVR sample ratio of the CTR loss
(``ctr_cvr_ratio``, :func:`~recsys.modules.multitask.ctr_sample_weights`) and predicts the tasks outside the
funnel (e.g. stay time) with plain towers over its main input. :class:`FunnelModel` does these three; a subclass
builds its CTR and CVR networks and returns :meth:`FunnelModel.funnel_outputs`.

Shapes: B batch, E main input width.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from recsys.config import NonNegativeFloat, PositiveFloat, Width
from recsys.data.batch import Batch
from recsys.errors import ConfigError
from recsys.models.base import RankingModel, Requirements
from recsys.modules.mlp import MLPOptions
from recsys.modules.multitask import TaskTowers, check_ratio, ctr_sample_weights, funnel_tasks
from recsys.modules.sparse import check_features
from recsys.schema import Schema


@dataclass
class FunnelOptions:
    """The funnel of a model config (flat ``model.params`` keys).

    Args:
        cvr_task: the funnel's conversion task when the schema has several.
        ctr_cvr_ratio: non-clicked impressions kept for the CTR loss per clicked one (see
            :func:`~recsys.modules.multitask.ctr_sample_weights`); ``None`` keeps all.
    """

    cvr_task: Optional[str] = None
    ctr_cvr_ratio: Optional[PositiveFloat] = None


@dataclass
class SharedInputFunnelOptions(FunnelOptions, MLPOptions):
    """A funnel whose CTR and CVR networks share the input embeddings, and whose other tasks get towers.

    Args:
        cvr_embedding_grad: scale in [0, 1] of the gradient the CVR side sends into the shared embeddings.
        extra_hidden: widths of the towers of tasks outside the funnel.
        activation, dropout: MLP options (:class:`~recsys.modules.mlp.MLPOptions`).
    """

    cvr_embedding_grad: NonNegativeFloat = 1.0
    extra_hidden: List[Width] = field(default_factory=lambda: [64])


class FunnelModel(RankingModel):
    """Base of the funnel models.

    ``__init__`` finds the funnel (``ctr``, ``cvr``; required unless ``funnel_required`` is False, then only when
    ``ctr_cvr_ratio`` is set) and the other tasks (``others``); :meth:`loss_weights` keeps the CTR:CVR sample
    ratio.

    Example::

        class MyFunnel(FunnelModel):
            def __init__(self, schema, config):
                super().__init__(schema, config)               # self.ctr, self.cvr, self.others
                ...                                            # the CTR and CVR networks over x [B, E]
                self.extra = self.extra_towers(width, config)  # towers of self.others (None if there are none)

            def forward(self, batch):
                ...
                return self.funnel_outputs(ctr_logit, cvr_logit, x)
    """

    requirements = Requirements(min_tasks=2, funnel=True)
    funnel_required = True
    config: FunnelOptions

    def __init__(self, schema: Schema, config: FunnelOptions) -> None:
        super().__init__(schema, config)
        name = getattr(type(self), "registry_name", type(self).__name__)
        self.ctr: Optional[str] = None
        self.cvr: Optional[str] = None
        if self.funnel_required or config.ctr_cvr_ratio is not None:
            check_ratio(config.ctr_cvr_ratio, name)
            self.ctr, self.cvr = funnel_tasks(schema, name, config.cvr_task)
        self.others = [t for t in self.tasks if t not in (self.ctr, self.cvr)]
        self.extra: Optional[TaskTowers] = None

    def extra_towers(self, width: int, options: SharedInputFunnelOptions) -> Optional[TaskTowers]:
        """Towers of the tasks outside the funnel over the main input [B, width] (None if there are none)."""
        if not self.others:
            return None
        return TaskTowers({t: width for t in self.others}, options.extra_hidden, options.activation, options.dropout)

    def funnel_pair(self) -> Tuple[str, str]:
        """The funnel's (CTR, CVR) task names; always there when ``funnel_required``."""
        if self.ctr is None or self.cvr is None:
            raise ConfigError(f"model '{type(self).__name__}' has no CTR -> CVR funnel in this schema")
        return self.ctr, self.cvr

    def funnel_outputs(self, ctr: torch.Tensor, cvr: torch.Tensor, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``{task: [B]}`` in schema order: the funnel's logits and the other tasks' towers (``self.extra``) on
        the main input x [B, E]."""
        ctr_task, cvr_task = self.funnel_pair()
        out = {ctr_task: ctr, cvr_task: cvr}
        if self.extra is not None:
            extra = self.extra({t: x for t in self.others})
            for t in self.others:
                out[t] = extra[t]
        return {t: out[t] for t in self.tasks}

    def loss_weights(self, batch: Batch, outputs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        ratio = self.config.ctr_cvr_ratio
        if self.ctr is None or ratio is None:
            return {}
        return {self.ctr: ctr_sample_weights(batch, self.ctr, ratio)}


def split_bias_features(
    schema: Schema, features: Optional[Sequence[str]], bias_features: Sequence[str], model: str
) -> Tuple[List[str], List[str]]:
    """(main features, bias features): the bias (position) features of a bias network and the features of the
    main networks (default: all the others), both checked against the schema.

    Raises:
        ConfigError: a name is not a feature, or no feature is left for the main networks.
    """
    bias = check_features(schema, bias_features, "bias_features")
    main = check_features(
        schema, features if features is not None else [f for f in schema.feature_names if f not in bias], "features"
    )
    if not main:
        raise ConfigError(f"model '{model}': no sparse feature left for the main networks")
    return main, bias
