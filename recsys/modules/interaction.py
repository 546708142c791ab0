"""Explicit feature-interaction blocks.

The cross networks are torchrec's (``torchrec.modules.crossnet.VectorCrossNet`` / ``CrossNet`` /
``LowRankCrossNet``); :func:`cross_network` picks between them. This module adds what torchrec lacks:

* :class:`FactorizationMachine` - the second-order term of FM / DeepFM, ``sum_{i<j} <v_i, v_j>``. (torchrec's
  ``FactorizationMachine`` flattens all embeddings into one vector and sums the products of every pair of its
  elements, including products across embedding dimensions, which is not FM's inner product of field vectors.)
* :class:`DomainFacilitatedInteraction` - the DFFI block of Guan et al., "DFFM: Domain Facilitated Feature
  Modeling for CTR Prediction", CIKM 2023: a micro-MLP applied to every pair of fields whose weights are
  generated from the domain (scenario) embedding.

Shapes: B batch, F fields, D embedding width, P = F (F - 1) / 2 field pairs.
"""

from typing import Optional

import torch
from torch import nn
from torchrec.modules.crossnet import CrossNet, LowRankCrossNet, VectorCrossNet


def cross_network(in_dim: int, num_layers: int, version: str = "v1", low_rank: Optional[int] = None) -> nn.Module:
    """A cross network over [B, in_dim] -> [B, in_dim].

    Args:
        in_dim: input width (the concatenated embeddings and dense features).
        num_layers: crossing layers.
        version: ``v1`` - DCN (Wang et al., ADKDD 2017): ``x_{l+1} = x_0 (x_l^T w_l) + b_l + x_l``
            (torchrec ``VectorCrossNet``); ``v2`` - DCN-V2 (Wang et al., WWW 2021): ``x_{l+1} = x_0 * (W_l x_l +
            b_l) + x_l`` with a full-rank ``W_l`` (``CrossNet``), or ``W_l = U_l V_l`` of rank ``low_rank``
            (``LowRankCrossNet``).
        low_rank: rank of DCN-V2's low-rank weights (v2 only).

    Example::

        cross = cross_network(64, num_layers=3, version="v2", low_rank=16)
        y = cross(x)       # [B, 64]
    """
    if version == "v1":
        if low_rank is not None:
            raise ValueError("low_rank applies to DCN-V2 only (version: v2)")
        return VectorCrossNet(in_features=in_dim, num_layers=num_layers)
    if version == "v2":
        if low_rank is not None:
            return LowRankCrossNet(in_features=in_dim, num_layers=num_layers, low_rank=low_rank)
        return CrossNet(in_features=in_dim, num_layers=num_layers)
    raise ValueError(f"cross network version must be v1 or v2, got {version!r}")


class FactorizationMachine(nn.Module):
    """FM's pairwise interactions of field embeddings, ``sum_{i<j} <v_i, v_j>``, computed in O(F D) as
    ``0.5 * sum_d ((sum_i v_id)^2 - sum_i v_id^2)`` (Rendle, "Factorization Machines", ICDM 2010).

    Shapes: [B, F, D] -> [B].

    Example::

        fm = FactorizationMachine()
        second_order = fm(emb.stack(names))     # [B]
    """

    def forward(self, fields: torch.Tensor) -> torch.Tensor:
        total = fields.sum(dim=1)
        return 0.5 * (total * total - (fields * fields).sum(dim=1)).sum(dim=1)


class DomainFacilitatedInteraction(nn.Module):
    """DFFM's domain-facilitated feature interaction (DFFI).

    For every pair of fields ``i < j`` the interaction is a micro-MLP over the pair whose parameters are generated
    per sample from the domain embedding ``d``:

        ``h_ij = W2(d)^T relu(W1(d)^T [e_i ; e_j] + b1(d)) + b2(d)``

    with ``W1(d) = reshape(A1 d + a1)`` ([2D, H]) and likewise ``b1, W2, b2``: the same pair interacts
    differently in every domain. (The paper leaves open what enters the micro-MLP; the concatenated pair can
    represent the inner product of FM/PNN and more. See docs/multi_scenario.md.)

    Args:
        num_fields: F.
        dim: embedding width D of every field.
        domain_dim: width of the domain embedding.
        hidden: H, the micro-MLP's hidden width.
        out_dim: O, outputs per pair.

    Shapes: fields [B, F, D], domain [B, Dd] -> [B, P * O].

    Example::

        dffi = DomainFacilitatedInteraction(num_fields=8, dim=16, domain_dim=16, hidden=8, out_dim=2)
        pairs = dffi(emb.stack(names), emb.concat(["scenario_id"]))   # [B, 28 * 2]
    """

    left: torch.Tensor
    right: torch.Tensor

    def __init__(self, num_fields: int, dim: int, domain_dim: int, hidden: int = 16, out_dim: int = 1) -> None:
        super().__init__()
        if num_fields < 2:
            raise ValueError("DFFI needs at least two fields")
        left, right = torch.triu_indices(num_fields, num_fields, offset=1)
        self.register_buffer("left", left, persistent=False)
        self.register_buffer("right", right, persistent=False)
        self.dim, self.hidden, self.out_dim = dim, hidden, out_dim
        self.num_pairs = int(left.numel())
        self.w1 = nn.Linear(domain_dim, 2 * dim * hidden)
        self.b1 = nn.Linear(domain_dim, hidden)
        self.w2 = nn.Linear(domain_dim, hidden * out_dim)
        self.b2 = nn.Linear(domain_dim, out_dim)
        self.output_dim = self.num_pairs * out_dim

    def micro_mlp(self, domain: torch.Tensor):
        """The generated parameters (W1 [B, 2D, H], b1 [B, 1, H], W2 [B, H, O], b2 [B, 1, O])."""
        b = domain.shape[0]
        return (
            self.w1(domain).view(b, 2 * self.dim, self.hidden),
            self.b1(domain).unsqueeze(1),
            self.w2(domain).view(b, self.hidden, self.out_dim),
            self.b2(domain).unsqueeze(1),
        )

    def forward(self, fields: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        pairs = torch.cat([fields[:, self.left], fields[:, self.right]], dim=-1)  # [B, P, 2D]
        w1, b1, w2, b2 = self.micro_mlp(domain)
        hidden = torch.relu(torch.bmm(pairs, w1) + b1)
        return (torch.bmm(hidden, w2) + b2).flatten(1)
