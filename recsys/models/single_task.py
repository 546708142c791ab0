"""Single-task towers with a bias sub-network: the single-task CVR baseline of Calibration4CVR.

Each task has its own MLP tower over the embeddings (no shared hidden layer), and a small bias network over the
position/bias features whose output is added to the task's logit, as in position-bias modelling with a shallow
tower (PAL: Guo et al., "PAL: A Position-bias Aware Learning Framework for CTR Prediction in Live
Recommender Systems", RecSys 2019; the YouTube shallow tower: Zhao et al., "Recommending What Video to Watch
Next", RecSys 2019). The main towers read the other features only, so position effects are absorbed by the
bias network.

The embedding tables are one EmbeddingBagCollection read by every tower (one EBC per model); ``embedding_grad``
scales what each task's loss sends into them: ``{ctr: 0, stay: 0}`` makes the CVR embeddings single-task too
(trained by the CVR loss alone), while the other towers read them without moving them. The CTR:CVR sample ratio
(``ctr_cvr_ratio``) needs a click -> conversion funnel in the schema.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
from torch import nn

from recsys.config import NonNegativeFloat, Width
from recsys.data.batch import Batch
from recsys.errors import ConfigError
from recsys.models.base import Requirements, register_model
from recsys.models.funnel import FunnelModel, FunnelOptions, split_bias_features
from recsys.modules.mlp import MLPOptions
from recsys.modules.multitask import GradScale, TaskTowers
from recsys.modules.sparse import FeatureInput, FeatureOptions
from recsys.schema import Schema


@dataclass
class SingleTaskConfig(MLPOptions, FeatureOptions, FunnelOptions):
    """Options of :class:`SingleTask`.

    Args:
        hidden: widths of each task's tower.
        bias_features: sparse features of the bias network (position and the like); ``[]``: no bias network.
        bias_hidden: widths of each task's bias network.
        features: sparse features of the main towers (default: all but ``bias_features``).
        use_dense: feed dense features to the main towers.
        activation, dropout: MLP options.
        embedding_grad: per task, the scale in [0, 1] of the gradient its tower sends into the embeddings
            (missing tasks: 1).
        ctr_cvr_ratio: non-clicked impressions kept for the CTR loss per clicked one (see
            :func:`~recsys.modules.multitask.ctr_sample_weights`); ``None`` keeps all.
        cvr_task: the funnel's conversion task when the schema has several (only for ``ctr_cvr_ratio``).
    """

    hidden: List[Width] = field(default_factory=lambda: [256, 128, 64])
    bias_features: List[str] = field(default_factory=lambda: ["position"])
    bias_hidden: List[Width] = field(default_factory=lambda: [16])
    embedding_grad: Dict[str, NonNegativeFloat] = field(default_factory=dict)


@register_model("single_task")
class SingleTask(FunnelModel):
    """Independent towers per task, each plus a bias network added to its logit.

    The funnel is needed only for the CTR:CVR sample ratio (``ctr_cvr_ratio``).

    Shapes: B batch, F main features, P bias features, D embedding dim, Dd dense.
    tower_t([B, F * D + Dd]) -> [B]; bias_t([B, P * D]) -> [B]; output_t = tower_t + bias_t.

    Example::

        model = SingleTask(schema, SingleTaskConfig(bias_features=["position"]))
        out = model(batch)             # {"ctr": [B], "cvr": [B], ...}
    """

    Config = SingleTaskConfig
    requirements = Requirements()
    funnel_required = False

    def __init__(self, schema: Schema, config: SingleTaskConfig) -> None:
        super().__init__(schema, config)
        main, self.bias_features = split_bias_features(schema, config.features, config.bias_features, "single_task")
        for t in config.embedding_grad:
            if t not in self.tasks:
                raise ConfigError(f"model.params.embedding_grad: '{t}' is not a task ({', '.join(self.tasks)})")
        self.sparse_arch = FeatureInput(schema, main, config.use_dense)
        self.grads = nn.ModuleDict({t: GradScale(config.embedding_grad.get(t, 1.0)) for t in self.tasks})
        self.towers = TaskTowers(
            {t: self.sparse_arch.width for t in self.tasks}, config.hidden, config.activation, config.dropout
        )
        self.bias: Optional[TaskTowers] = None
        if self.bias_features:
            self.bias = TaskTowers(
                {t: self.sparse_arch.output_dim(self.bias_features) for t in self.tasks},
                config.bias_hidden,
                config.activation,
            )

    def forward(self, batch: Batch) -> Dict[str, torch.Tensor]:
        x, emb = self.sparse_arch.read(batch)
        logits = self.towers({t: self.grads[t](x) for t in self.tasks})
        if self.bias is None:
            return {t: logits[t] for t in self.tasks}
        b = emb.concat(self.bias_features)
        bias = self.bias({t: self.grads[t](b) for t in self.tasks})
        return {t: logits[t] + bias[t] for t in self.tasks}
