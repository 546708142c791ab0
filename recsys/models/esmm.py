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
from typing import Dict, List

import torch

from recsys.config import Width
from recsys.data.batch import Batch
from recsys.models.base import register_model
from recsys.models.funnel import FunnelModel, SharedInputFunnelOptions
from recsys.modules.multitask import GradScale, TaskTowers
from recsys.modules.sparse import FeatureInput, FeatureOptions
from recsys.schema import Schema


@dataclass
class ESMMConfig(SharedInputFunnelOptions, FeatureOptions):
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


@register_model("esmm")
class ESMM(FunnelModel):
    """ESMM over a schema with a click -> conversion funnel.

    Shapes: B batch, F features, D embedding dim, Dd dense features.
    x = [B, F * D + Dd] -> CTR tower -> [B] (pCTR logit); x -> CVR tower -> [B] (pCVR logit);
    pCTCVR = sigmoid(ctr) * sigmoid(cvr) lives in the loss and the CTCVR metric.

    Example::

        model = ESMM(schema, ESMMConfig(hidden=[128, 64]))
        out = model(batch)             # {"ctr": [B], "cvr": [B], ...}: logits of pCTR and pCVR
    """

    Config = ESMMConfig
    dependent_loss = "joint"

    def __init__(self, schema: Schema, config: ESMMConfig) -> None:
        super().__init__(schema, config)
        self.sparse_arch = FeatureInput(schema, config.features, config.use_dense)
        width = self.sparse_arch.width
        self.cvr_grad = GradScale(config.cvr_embedding_grad)
        ctr, cvr = self.funnel_pair()
        self.towers = TaskTowers({ctr: width, cvr: width}, config.hidden, config.activation, config.dropout)
        self.extra = self.extra_towers(width, config)

    def forward(self, batch: Batch) -> Dict[str, torch.Tensor]:
        x, _ = self.sparse_arch.read(batch)
        ctr, cvr = self.funnel_pair()
        logits = self.towers({ctr: x, cvr: self.cvr_grad(x)})
        return self.funnel_outputs(logits[ctr], logits[cvr], x)
