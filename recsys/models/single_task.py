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

from recsys.config import Fraction, NonNegativeFloat, PositiveFloat, Width
from recsys.modules.mlp import Activation
from recsys.data.batch import Batch
from recsys.errors import ConfigError
from recsys.models.base import RankingModel, register_model
from recsys.modules.multitask import GradScale, TaskTowers, check_ratio, ctr_sample_weights, funnel_tasks
from recsys.modules.sparse import SparseArch
from recsys.schema import Schema


@dataclass
class SingleTaskConfig:
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
    features: Optional[List[str]] = None
    use_dense: bool = True
    activation: Activation = "relu"
    dropout: Fraction = 0.0
    embedding_grad: Dict[str, NonNegativeFloat] = field(default_factory=dict)
    ctr_cvr_ratio: Optional[PositiveFloat] = None
    cvr_task: Optional[str] = None


@register_model("single_task")
class SingleTask(RankingModel):
    """Independent towers per task, each plus a bias network added to its logit.

    Shapes: B batch, F main features, P bias features, D embedding dim, Dd dense.
    tower_t([B, F * D + Dd]) -> [B]; bias_t([B, P * D]) -> [B]; output_t = tower_t + bias_t.

    Example::

        model = SingleTask(schema, SingleTaskConfig(bias_features=["position"]))
        out = model(batch)             # {"ctr": [B], "cvr": [B], ...}
    """

    Config = SingleTaskConfig

    def __init__(self, schema: Schema, config: SingleTaskConfig) -> None:
        super().__init__(schema, config)
        self.bias_features = self.check_features(config.bias_features, "bias_features")
        main = config.features if config.features is not None else [
            f for f in schema.feature_names if f not in self.bias_features]
        self.features = self.check_features(main, "features")
        if not self.features:
            raise ConfigError("model 'single_task': no sparse feature left for the main towers")
        for t in config.embedding_grad:
            if t not in self.tasks:
                raise ConfigError(f"model.params.embedding_grad: '{t}' is not a task ({', '.join(self.tasks)})")
        self.ctr: Optional[str] = None
        if config.ctr_cvr_ratio is not None:
            check_ratio(config.ctr_cvr_ratio, "single_task")
            self.ctr, _ = funnel_tasks(schema, "single_task", config.cvr_task)
        self.sparse_arch = SparseArch(schema)
        self.use_dense = config.use_dense and schema.dense_dim > 0
        width = self.sparse_arch.output_dim(self.features) + (schema.dense_dim if self.use_dense else 0)
        self.grads = nn.ModuleDict({t: GradScale(config.embedding_grad.get(t, 1.0)) for t in self.tasks})
        self.towers = TaskTowers({t: width for t in self.tasks}, config.hidden, config.activation, config.dropout)
        self.bias: Optional[TaskTowers] = None
        if self.bias_features:
            self.bias = TaskTowers({t: self.sparse_arch.output_dim(self.bias_features) for t in self.tasks},
                                   config.bias_hidden, config.activation)

    def forward(self, batch: Batch) -> Dict[str, torch.Tensor]:
        emb = self.sparse_arch(batch.sparse)
        x = emb.concat(self.features)
        if self.use_dense:
            x = torch.cat([x, batch.dense], dim=1)
        logits = self.towers({t: self.grads[t](x) for t in self.tasks})
        if self.bias is None:
            return {t: logits[t] for t in self.tasks}
        b = emb.concat(self.bias_features)
        bias = self.bias({t: self.grads[t](b) for t in self.tasks})
        return {t: logits[t] + bias[t] for t in self.tasks}

    def loss_weights(self, batch: Batch, outputs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        if self.ctr is None or self.config.ctr_cvr_ratio is None:
            return {}
        return {self.ctr: ctr_sample_weights(batch, self.ctr, self.config.ctr_cvr_ratio)}
