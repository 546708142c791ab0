"""DFFM: Domain Facilitated Feature Modeling.

Guan et al., "DFFM: Domain Facilitated Feature Modeling for CTR Prediction", CIKM 2023.

DFFM puts the domain (scenario) into the parameters of the feature-interaction module: every pair of fields
interacts through a micro-MLP whose weights are generated from the domain embedding
(:class:`~recsys.modules.interaction.DomainFacilitatedInteraction`, DFFI). The pairwise outputs, the field
embeddings and the dense features feed an MLP with one output per task.

Choices where the paper leaves room (see docs/multi_scenario.md): the domain embedding is the embedding of the
schema's ``scenario``-group features (the scenario id; configurable); the micro-MLP reads the concatenated pair
``[e_i ; e_j]`` and has one hidden layer; the domain-facilitated user-behaviour module (DFUB) is not built, as the
datasets here have no behaviour sequences. DFFM has no per-scenario towers, so it is not an SSIM backbone.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch

from recsys.config import Width
from recsys.data.batch import Batch
from recsys.errors import ConfigError
from recsys.models.base import RankingModel, Requirements, register_model
from recsys.modules.interaction import DomainFacilitatedInteraction
from recsys.modules.mlp import MLPOptions, NormOptions
from recsys.modules.multitask import TaskHeads
from recsys.modules.sparse import FeatureInput, check_features
from recsys.schema import Schema


@dataclass
class DFFMConfig(MLPOptions, NormOptions):
    """Options of :class:`DFFM`.

    Args:
        hidden: widths of the final MLP.
        micro_hidden: hidden width of each pair's micro-MLP.
        micro_out: outputs per field pair.
        domain_features: features whose embeddings form the domain embedding (default: the ``scenario`` group).
        interaction_features: fields that interact pairwise (default: all but the domain features).
        dropout, activation, norm: final MLP options.
        use_dense: feed dense features to the final MLP.
    """

    hidden: List[Width] = field(default_factory=lambda: [256, 128, 64])
    micro_hidden: Width = 8
    micro_out: Width = 2
    domain_features: Optional[List[str]] = None
    interaction_features: Optional[List[str]] = None
    use_dense: bool = True


@register_model("dffm")
class DFFM(RankingModel):
    """DFFM over a schema.

    Shapes: B batch, F interacting fields, D width, P = F (F - 1) / 2.
    fields [B, F, D], domain [B, Dd] -> DFFI [B, P * O]; [all embeddings, dense, DFFI] -> MLP -> ``{task: [B]}``.

    Example::

        model = DFFM(schema, DFFMConfig(micro_hidden=8, micro_out=2))
        logits = model(batch)        # {"ctr": [B], ...}
    """

    requirements = Requirements(scenario=True)

    Config = DFFMConfig

    def __init__(self, schema: Schema, config: DFFMConfig) -> None:
        super().__init__(schema, config)
        default_domain = [f.name for f in schema.features_in(["scenario"])]
        self.domain_features = check_features(
            schema, config.domain_features if config.domain_features is not None else default_domain, "domain_features"
        )
        if not self.domain_features:
            raise ConfigError(
                "model.params.domain_features: DFFM needs a domain embedding, but the schema has no "
                "'scenario'-group feature; name the domain features"
            )
        default_fields = [n for n in schema.feature_names if n not in self.domain_features]
        self.fields = check_features(
            schema,
            config.interaction_features if config.interaction_features is not None else default_fields,
            "interaction_features",
        )
        dims = {schema.feature(n).embedding_dim for n in self.fields}
        if len(dims) != 1:
            raise ConfigError(
                f"model.params.interaction_features: DFFI needs equal embedding widths, got {sorted(dims)}"
            )
        # the MLP reads every embedding, the field pairs' interactions and the dense features
        self.sparse_arch = FeatureInput(schema, None, config.use_dense)
        self.dffi = DomainFacilitatedInteraction(
            len(self.fields),
            dims.pop(),
            self.sparse_arch.output_dim(self.domain_features),
            hidden=config.micro_hidden,
            out_dim=config.micro_out,
        )
        self.mlp = config.mlp(self.sparse_arch.width + self.dffi.output_dim, config.hidden, norm=config.norm)
        self.heads = TaskHeads(self.mlp.output_dim, self.tasks)

    def forward(self, batch: Batch) -> Dict[str, torch.Tensor]:
        emb = self.sparse_arch(batch.sparse)
        pairs = self.dffi(emb.stack(self.fields), emb.concat(self.domain_features))
        x = torch.cat([emb.concat(self.sparse_arch.features), pairs], dim=1)
        return self.heads(self.mlp(self.sparse_arch.with_dense(x, batch)))
