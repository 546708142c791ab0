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
from typing import Dict, List

import torch
from torch import nn

from recsys.config import Width
from recsys.data.batch import Batch
from recsys.errors import ConfigError
from recsys.models.base import RankingModel, register_model
from recsys.models.multi_scenario import MultiScenarioModel, ScenarioTowerOptions, ScenarioViews, task_views
from recsys.modules.interaction import FactorizationMachine
from recsys.modules.mlp import MLPOptions, NormOptions
from recsys.modules.multitask import TaskHeads
from recsys.modules.sparse import (
    Embeddings,
    FeatureInput,
    FeatureOptions,
    dense_first_order,
    first_order_logits,
    wide_width,
)
from recsys.schema import Schema


@dataclass
class DeepFMConfig(MLPOptions, NormOptions, FeatureOptions):
    """Options of :class:`DeepFM`.

    Args:
        hidden: widths of the deep MLP.
        dropout, activation, norm: MLP options.
        features: sparse features of all three parts (default: all; FM needs equal embedding widths).
        use_dense: feed dense features to the deep and first-order parts.
    """

    hidden: List[Width] = field(default_factory=lambda: [256, 128, 64])


@dataclass
class DeepFMMTSConfig(DeepFMConfig, ScenarioTowerOptions):
    """Options of :class:`DeepFMMTS`: those of DeepFM (``hidden`` is the shared bottom) plus the towers.

    Args:
        tower_hidden: widths of each scenario's tower (one output per task).
    """

    hidden: List[Width] = field(default_factory=lambda: [256, 128])


class FMModel(RankingModel):
    """What DeepFM and DeepFM MT-S share: the embeddings with first-order (wide) weights, the dense features'
    linear map and FM's pairwise term with a learned scale per task.

    Shapes: ``shallow``: [B, T]; the deep input x is [B, F * D + Dd] (``sparse_arch.width``).
    """

    def __init__(self, schema: Schema, config: DeepFMConfig) -> None:
        super().__init__(schema, config)
        self.sparse_arch = FeatureInput(schema, config.features, config.use_dense, wide_dim=wide_width(len(self.tasks)))
        dims = set(self.sparse_arch.field_dims())
        if len(dims) != 1:
            raise ConfigError(f"model.params.features: FM needs equal embedding widths, got {sorted(dims)}")
        self.dense_linear = dense_first_order(self.sparse_arch, len(self.tasks))
        self.fm = FactorizationMachine()
        self.fm_scale = nn.Parameter(torch.ones(len(self.tasks)))
        self.instance_dim = self.sparse_arch.width

    def shallow(self, emb: Embeddings, batch: Batch) -> torch.Tensor:
        """[B, T]: first-order terms plus the scaled FM term, per task."""
        features = self.sparse_arch.features
        first = first_order_logits(emb, features, len(self.tasks), self.dense_linear, batch.dense)
        return first + self.fm(emb.stack(features)).unsqueeze(1) * self.fm_scale


@register_model("deepfm")
class DeepFM(FMModel):
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
        self.deep = config.mlp(self.sparse_arch.width, config.hidden, norm=config.norm)
        self.heads = TaskHeads(self.deep.output_dim, self.tasks)

    def forward(self, batch: Batch) -> Dict[str, torch.Tensor]:
        emb = self.sparse_arch(batch.sparse)
        shallow = self.shallow(emb, batch)
        deep = self.heads(self.deep(self.sparse_arch.main_input(emb, batch)))
        return {t: deep[t] + shallow[:, i] for i, t in enumerate(self.tasks)}


@register_model("deepfm_mts")
class DeepFMMTS(FMModel, MultiScenarioModel):
    """DeepFM with scenario-specific towers on the deep part (MT-S).

    Shapes: deep bottom [B, H] -> towers [B, S, T] + shared first-order/FM [B, 1, T] -> ``{task: [B, S]}``.

    Example::

        model = DeepFMMTS(schema, DeepFMMTSConfig())
        model.scenario_views(batch).outputs["ctr"]      # [B, S]
    """

    Config = DeepFMMTSConfig

    def __init__(self, schema: Schema, config: DeepFMMTSConfig) -> None:
        super().__init__(schema, config)
        self.bottom = config.mlp(self.sparse_arch.width, config.hidden, norm=config.norm)
        self.towers = self.scenario_towers(self.bottom.output_dim, config)

    def scenario_views(self, batch: Batch) -> ScenarioViews:
        x, emb = self.sparse_arch.read(batch)
        stacked = self.towers(self.bottom(x)) + self.shallow(emb, batch).unsqueeze(1)
        return ScenarioViews(task_views(stacked, self.tasks), x)
