"""PLE: Progressive Layered Extraction.

Tang et al., "Progressive Layered Extraction (PLE): A Novel Multi-Task Learning (MTL) Model for Personalized
Recommendations", RecSys 2020.

Stacked customized-gate-control (CGC) levels: each level has task-specific experts and shared experts; a task's
gate mixes its own and the shared experts, and (below the top level) a shared gate mixes all experts into the
shared input of the next level. The top level's per-task mixtures feed the task towers
(:class:`~recsys.modules.experts.PLE`). Every schema task gets experts, gates and a tower.
"""

from dataclasses import dataclass
from typing import Dict

import torch

from recsys.data.batch import Batch
from recsys.models.base import RankingModel, Requirements, register_model
from recsys.modules.experts import PLE as PLELayers
from recsys.modules.experts import PLEOptions
from recsys.modules.multitask import TowerOptions
from recsys.modules.sparse import FeatureInput, FeatureOptions
from recsys.schema import Schema


@dataclass
class PLEConfig(PLEOptions, TowerOptions, FeatureOptions):
    """Options of :class:`PLE`.

    Args:
        levels, specific_experts, shared_experts, expert_hidden: the extraction levels
            (:class:`~recsys.modules.experts.PLEOptions`).
        tower: hidden widths of each task tower (:class:`~recsys.modules.multitask.TowerOptions`).
        activation, dropout: MLP options.
        features, use_dense: the input of the first level (:class:`~recsys.modules.sparse.FeatureOptions`).
    """


@register_model("ple")
class PLE(RankingModel):
    """PLE with one tower per task.

    Shapes: B batch, F features, D embedding dim, Dd dense, H expert width.
    x [B, F * D + Dd] -> ``levels`` CGC layers -> {task: [B, H]} -> tower_t -> [B].

    Example::

        model = PLE(schema, PLEConfig(levels=2, specific_experts=1, shared_experts=1))
        out = model(batch)            # {"ctr": [B], "cvr": [B], ...}
    """

    requirements = Requirements(min_tasks=2)

    Config = PLEConfig

    def __init__(self, schema: Schema, config: PLEConfig) -> None:
        super().__init__(schema, config)
        self.sparse_arch = FeatureInput(schema, config.features, config.use_dense)
        self.ple = PLELayers.from_options(self.sparse_arch.width, self.tasks, config)
        self.towers = config.towers(self.ple.output_dim, self.tasks)

    def forward(self, batch: Batch) -> Dict[str, torch.Tensor]:
        x, _ = self.sparse_arch.read(batch)
        logits = self.towers(self.ple(x))
        return {t: logits[t] for t in self.tasks}
