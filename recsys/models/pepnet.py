"""PEPNet: Parameter and Embedding Personalized Network.

Chang et al., "PEPNet: Parameter and Embedding Personalized Network for Infusing with Personalized Prior
Information", KDD 2023 (arXiv:2302.01115). The public relative of CBMR:

* **EPNet** personalises the embeddings per domain: ``O_ep = GateNU(E(domain) + stop_gradient(E)) (x) E``
  (the domain is the scene here; the main embeddings are detached inside the gate);
* **PPNet** personalises the DNN parameters: for every hidden layer l of the task towers,
  ``GateNU_l(O_prior + stop_gradient(O_ep))`` gives per-task, per-neuron scales ``gamma * sigmoid`` (gamma = 2)
  multiplying that layer's output; the priors are user, item and author (host) features, trained through the
  gates. The gates are parallel (each reads the same input), one per layer, split by task.

Each task has its own tower. Same schema, same single SparseArch and same trainer as every model here.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Literal, Optional, cast

import torch

from recsys.config import PositiveFloat, Width
from recsys.data.batch import Batch
from recsys.errors import ConfigError
from recsys.models.base import RankingModel, register_model
from recsys.modules.calibration import EPNet, MlpCB, scaled_mlp
from recsys.modules.mlp import MLP, MLPOptions
from recsys.modules.multitask import task_towers
from recsys.modules.sparse import FeatureInput, FeatureOptions, check_features
from recsys.schema import Schema


@dataclass
class PEPNetConfig(MLPOptions, FeatureOptions):
    """Options of :class:`PEPNet`.

    Args:
        hidden: widths of each task tower's hidden layers (each is scaled by PPNet).
        dropout, activation: tower options.
        features: the general (main) sparse features (default: all).
        domain_features: EPNet's domain features (default: the scenario group, i.e. the scene id).
        prior_features: PPNet's personal priors (default: the user, item and host groups).
        use_dense: dense features enter the towers (and, stop-gradient, the PPNet gates).
        epnet, ppnet: switch either part off (both off: a multi-tower DNN).
        gate_hidden: hidden width of every GateNU.
        gamma: gates scale in (0, gamma).
        stop_gradient: detach the main embeddings inside EPNet and PPNet (the paper's choice).
        epnet_granularity: EPNet scales per ``field`` or per ``field_dim``.
    """

    hidden: List[Width] = field(default_factory=lambda: [256, 128, 64])
    domain_features: Optional[List[str]] = None
    prior_features: Optional[List[str]] = None
    epnet: bool = True
    ppnet: bool = True
    gate_hidden: Width = 128
    gamma: PositiveFloat = 2.0
    stop_gradient: bool = True
    epnet_granularity: Literal["field", "field_dim"] = "field"


@register_model("pepnet")
class PEPNet(RankingModel):
    """EPNet on the embeddings, PPNet on every layer of one tower per task.

    Shapes: B = batch, F = main features, D = embedding dim, Dd = dense, H_l = tower widths, T = tasks.
    E [B, F * D] -> EPNet -> O_ep [B, F * D] (+ dense) -> per task t: tower layer l scaled by PPNet's
    [B, H_l] slice for t -> [B]. Outputs ``{task: [B]}``.

    Example::

        model = PEPNet(schema, PEPNetConfig(hidden=[128, 64]))
        logits = model(batch)      # {"ctr": [B], ...}
    """

    Config = PEPNetConfig

    def __init__(self, schema: Schema, config: PEPNetConfig) -> None:
        super().__init__(schema, config)
        if not config.hidden:
            raise ConfigError("model.params.hidden: PEPNet needs at least one tower layer")
        self.domain_features = (
            check_features(schema, config.domain_features, "domain_features")
            if config.domain_features is not None
            else [f.name for f in schema.features_in(["scenario"])]
        )
        self.prior_features = (
            check_features(schema, config.prior_features, "prior_features")
            if config.prior_features is not None
            else [f.name for f in schema.features_in(["user", "item", "host"])]
        )
        self.sparse_arch = FeatureInput(schema, config.features, config.use_dense)
        in_dim = self.sparse_arch.width
        self.epnet: Optional[EPNet] = None
        if config.epnet:
            self.epnet = EPNet(
                self.sparse_arch.output_dim(self.domain_features),
                self.sparse_arch.field_dims(),
                hidden=config.gate_hidden,
                gamma=config.gamma,
                granularity=config.epnet_granularity,
                stop_gradient=config.stop_gradient,
            )
        self.towers = task_towers({t: in_dim for t in self.tasks}, config.hidden, config.activation, config.dropout)
        self.hidden = list(config.hidden)
        self.ppnet: Optional[MlpCB] = None
        if config.ppnet:
            prior_dim = self.sparse_arch.output_dim(self.prior_features)
            self.ppnet = MlpCB(
                prior_dim + in_dim,
                [h * len(self.tasks) for h in config.hidden],
                hidden=config.gate_hidden,
                gamma=config.gamma,
                serial=False,
                stop_gradient=config.stop_gradient,
            )

    def forward(self, batch: Batch) -> Dict[str, torch.Tensor]:
        emb = self.sparse_arch(batch.sparse)
        x = emb.concat(self.sparse_arch.features)
        if self.epnet is not None:
            domain = emb.concat(self.domain_features) if self.domain_features else None
            x = self.epnet(domain, x)
        x = self.sparse_arch.with_dense(x, batch)
        out: Dict[str, torch.Tensor] = {}
        if self.ppnet is None:
            for t in self.tasks:
                out[t] = self.towers[t](x).squeeze(-1)
            return out
        prior = emb.concat(self.prior_features) if self.prior_features else None
        scales = self.ppnet(prior, x)
        for i, t in enumerate(self.tasks):
            # PPNet's gates cover every task: layer l's scales [B, T * H_l], task i's slice is its own
            mine = [scales[layer][:, i * h : (i + 1) * h] for layer, h in enumerate(self.hidden)]
            out[t] = scaled_mlp(cast(MLP, self.towers[t]), x, mine).squeeze(-1)
        return out
