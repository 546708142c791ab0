"""ESMM: Entire Space Multi-task Model.

Ma et al., "Entire Space Multi-Task Model: An Effective Approach for Estimating Post-Click Conversion Rate",
SIGIR 2018 (arXiv:1804.07931).

A CTR tower and a CVR tower over the same (shared) embeddings. The model predicts pCTR and pCVR; pCTCVR is
their product. Both losses are over the entire impression space: the CTR loss on every impression against the
click, and the CTCVR loss on every impression against click AND conversion, with pCTCVR = pCTR x pCVR computed
in log space (``dependent_loss = "joint"``, see :func:`recsys.train.losses.joint_bce`). There is no direct
CVR loss, which removes the sample-selection bias of training CVR on clicks only and lets the abundant CTR
data train the shared embeddings.

The funnel's tasks come from the schema (the binary task with ``depends_on`` and its parent); any other task
(e.g. stay time) gets a plain tower over the same input, trained by its own loss.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch

from recsys.config import Fraction, NonNegativeFloat, PositiveFloat, Width
from recsys.modules.mlp import Activation
from recsys.data.batch import Batch
from recsys.models.base import RankingModel, Requirements, register_model
from recsys.modules.multitask import GradScale, TaskTowers, check_ratio, ctr_sample_weights, funnel_tasks
from recsys.modules.sparse import SparseArch
from recsys.schema import Schema


@dataclass
class ESMMConfig:
    """Options of :class:`ESMM`.

    Args:
        hidden: widths of the CTR and of the CVR tower (the paper's towers are identical).
        extra_hidden: widths of the towers of tasks outside the funnel.
        activation, dropout: tower MLP options.
        features: sparse features (default: all).
        use_dense: feed dense features to the towers.
        cvr_task: the funnel's conversion task when the schema has several.
        cvr_embedding_grad: scale in [0, 1] of the gradient the CVR tower sends into the shared embeddings.
        ctr_cvr_ratio: non-clicked impressions kept for the CTR loss per clicked one (see
            :func:`~recsys.modules.multitask.ctr_sample_weights`); ``None`` keeps all.
    """

    hidden: List[Width] = field(default_factory=lambda: [256, 128, 64])
    extra_hidden: List[Width] = field(default_factory=lambda: [64])
    activation: Activation = "relu"
    dropout: Fraction = 0.0
    features: Optional[List[str]] = None
    use_dense: bool = True
    cvr_task: Optional[str] = None
    cvr_embedding_grad: NonNegativeFloat = 1.0
    ctr_cvr_ratio: Optional[PositiveFloat] = None


@register_model("esmm")
class ESMM(RankingModel):
    """ESMM over a schema with a click -> conversion funnel.

    Shapes: B batch, F features, D embedding dim, Dd dense features.
    x = [B, F * D + Dd] -> CTR tower -> [B] (pCTR logit); x -> CVR tower -> [B] (pCVR logit);
    pCTCVR = sigmoid(ctr) * sigmoid(cvr) lives in the loss and the CTCVR metric.

    Example::

        model = ESMM(schema, ESMMConfig(hidden=[128, 64]))
        out = model(batch)             # {"ctr": [B], "cvr": [B], ...}: logits of pCTR and pCVR
    """

    requirements = Requirements(min_tasks=2, funnel=True)

    Config = ESMMConfig
    dependent_loss = "joint"

    def __init__(self, schema: Schema, config: ESMMConfig) -> None:
        super().__init__(schema, config)
        self.ctr, self.cvr = funnel_tasks(schema, "esmm", config.cvr_task)
        check_ratio(config.ctr_cvr_ratio, "esmm")
        self.features = self.check_features(config.features, "features")
        self.sparse_arch = SparseArch(schema)
        self.use_dense = config.use_dense and schema.dense_dim > 0
        width = self.sparse_arch.output_dim(self.features) + (schema.dense_dim if self.use_dense else 0)
        self.cvr_grad = GradScale(config.cvr_embedding_grad)
        self.towers = TaskTowers({self.ctr: width, self.cvr: width}, config.hidden, config.activation, config.dropout)
        self.others = [t for t in self.tasks if t not in (self.ctr, self.cvr)]
        self.extra = (TaskTowers({t: width for t in self.others}, config.extra_hidden, config.activation,
                                 config.dropout) if self.others else None)

    def forward(self, batch: Batch) -> Dict[str, torch.Tensor]:
        x = self.sparse_arch(batch.sparse).concat(self.features)
        if self.use_dense:
            x = torch.cat([x, batch.dense], dim=1)
        logits = self.towers({self.ctr: x, self.cvr: self.cvr_grad(x)})
        out = {self.ctr: logits[self.ctr], self.cvr: logits[self.cvr]}
        if self.extra is not None:
            extra = self.extra({t: x for t in self.others})
            for t in self.others:
                out[t] = extra[t]
        return {t: out[t] for t in self.tasks}

    def loss_weights(self, batch: Batch, outputs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        if self.config.ctr_cvr_ratio is None:
            return {}
        return {self.ctr: ctr_sample_weights(batch, self.ctr, self.config.ctr_cvr_ratio)}
