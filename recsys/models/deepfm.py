"""DeepFM.

Guo et al., "DeepFM: A Factorization-Machine based Neural Network for CTR Prediction", IJCAI 2017
(arXiv:1703.04247).

``logit = sum_i w_i x_i + <w, dense> + sum_{i<j} <v_i, v_j> + DNN([v_1, ..., v_F, dense])``: a first-order part
(wide tables of the one EmbeddingBagCollection, one column per task, plus a linear map of the dense features),
FM's pairwise interactions of the field embeddings, and an MLP over the same embeddings. With several tasks each
task has its own first-order weights, its own output layer and its own learned scale on the FM term (which starts
at 1; the pairwise sum itself is shared).

* ``deepfm`` - one model for every scenario (MT; ST when trained per scenario).
* ``deepfm_mts`` - MT-S: the MLP is a shared bottom with one tower per scenario; the first-order and FM terms are
  shared and added to every scenario's tower (the DeepFM backbone SSIM wraps).
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
from torch import nn

from recsys.config import Fraction, Width
from recsys.data.batch import Batch
from recsys.errors import ConfigError
from recsys.models.base import RankingModel, register_model
from recsys.models.multi_scenario import MultiScenarioModel, ScenarioViews, task_views
from recsys.models.wide_deep import wide_width
from recsys.modules.interaction import FactorizationMachine
from recsys.modules.mlp import Activation, MLP, Norm, TaskHeads
from recsys.modules.scenario import ScenarioMLP
from recsys.modules.sparse import Embeddings, SparseArch
from recsys.schema import Schema


@dataclass
class DeepFMConfig:
    """Options of :class:`DeepFM`.

    Args:
        hidden: widths of the deep MLP.
        dropout, activation, norm: MLP options.
        features: sparse features of all three parts (default: all; FM needs equal embedding widths).
        use_dense: feed dense features to the deep and first-order parts.
    """

    hidden: List[Width] = field(default_factory=lambda: [256, 128, 64])
    dropout: Fraction = 0.0
    activation: Activation = "relu"
    norm: Norm = "none"
    features: Optional[List[str]] = None
    use_dense: bool = True


@dataclass
class DeepFMMTSConfig(DeepFMConfig):
    """Options of :class:`DeepFMMTS`: those of DeepFM (``hidden`` is the shared bottom) plus the towers.

    Args:
        tower_hidden: widths of each scenario's tower (one output per task).
    """

    hidden: List[Width] = field(default_factory=lambda: [256, 128])
    tower_hidden: List[Width] = field(default_factory=lambda: [64])


class _DeepFMParts:
    """The parts DeepFM and its MT-S variant share: embeddings, first-order weights, FM, deep input."""

    sparse_arch: SparseArch
    features: List[str]
    tasks: List[str]

    def _build_shallow(self, schema: Schema, config: DeepFMConfig) -> int:
        """Build the first-order and FM parts; returns the deep input width."""
        self.features = self.check_features(config.features, "features")  # type: ignore[attr-defined]
        dims = {schema.feature(n).embedding_dim for n in self.features}
        if len(dims) != 1:
            raise ConfigError(f"model.params.features: FM needs equal embedding widths, got {sorted(dims)}")
        self.sparse_arch = SparseArch(schema, wide_dim=wide_width(len(self.tasks)))
        self.use_dense = config.use_dense and schema.dense_dim > 0
        self.dense_linear = nn.Linear(schema.dense_dim, len(self.tasks)) if self.use_dense else None
        self.fm = FactorizationMachine()
        self.fm_scale = nn.Parameter(torch.ones(len(self.tasks)))
        return self.sparse_arch.output_dim(self.features) + (schema.dense_dim if self.use_dense else 0)

    def _shallow(self, emb: Embeddings, batch: Batch) -> torch.Tensor:
        """[B, T]: first-order terms plus the scaled FM term, per task."""
        first = emb.wide_sum(self.features)[:, : len(self.tasks)]
        if self.dense_linear is not None:
            first = first + self.dense_linear(batch.dense)
        return first + self.fm(emb.stack(self.features)).unsqueeze(1) * self.fm_scale

    def _deep_input(self, emb: Embeddings, batch: Batch) -> torch.Tensor:
        x = emb.concat(self.features)
        return torch.cat([x, batch.dense], dim=1) if self.use_dense else x


@register_model("deepfm")
class DeepFM(_DeepFMParts, RankingModel):
    """DeepFM over a schema.

    Shapes: B batch, F features, D embedding width, Dd dense features, T tasks.
    first order [B, T] + FM [B, 1] * scale [T] + MLP([B, F * D + Dd]) -> heads [B, T] -> ``{task: [B]}``.

    Example::

        model = DeepFM(schema, DeepFMConfig(hidden=[128, 64]))
        logits = model(batch)       # {"ctr": [B], ...}
    """

    Config = DeepFMConfig

    def __init__(self, schema: Schema, config: DeepFMConfig) -> None:
        super().__init__(schema, config)
        in_dim = self._build_shallow(schema, config)
        self.deep = MLP(in_dim, config.hidden, activation=config.activation, dropout=config.dropout,
                        norm=config.norm)
        self.heads = TaskHeads(self.deep.output_dim, self.tasks)

    def forward(self, batch: Batch) -> Dict[str, torch.Tensor]:
        emb = self.sparse_arch(batch.sparse)
        shallow = self._shallow(emb, batch)
        deep = self.heads(self.deep(self._deep_input(emb, batch)))
        return {t: deep[t] + shallow[:, i] for i, t in enumerate(self.tasks)}


@register_model("deepfm_mts")
class DeepFMMTS(_DeepFMParts, MultiScenarioModel):
    """DeepFM with scenario-specific towers on the deep part (MT-S).

    Shapes: deep bottom [B, H] -> towers [B, S, T] + shared first-order/FM [B, 1, T] -> ``{task: [B, S]}``.

    Example::

        model = DeepFMMTS(schema, DeepFMMTSConfig())
        model.scenario_views(batch).outputs["ctr"]      # [B, S]
    """

    Config = DeepFMMTSConfig

    def __init__(self, schema: Schema, config: DeepFMMTSConfig) -> None:
        super().__init__(schema, config)
        in_dim = self.instance_dim = self._build_shallow(schema, config)
        self.bottom = MLP(in_dim, config.hidden, activation=config.activation, dropout=config.dropout,
                          norm=config.norm)
        self.towers = ScenarioMLP(self.bottom.output_dim, schema.num_scenarios, config.tower_hidden,
                                  output_dim=len(self.tasks), activation=config.activation, dropout=config.dropout)

    def scenario_views(self, batch: Batch) -> ScenarioViews:
        emb = self.sparse_arch(batch.sparse)
        x = self._deep_input(emb, batch)
        stacked = self.towers(self.bottom(x)) + self._shallow(emb, batch).unsqueeze(1)
        return ScenarioViews(task_views(stacked, self.tasks), x)
