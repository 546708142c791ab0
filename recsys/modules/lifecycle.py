"""User-lifecycle blocks of STAN (Li et al., "STAN: Stage-Adaptive Network for Multi-Task Recommendation by
Learning User Lifecycle-Based Representation", RecSys 2023, arXiv:2306.12232).

* :class:`UserStateBranch`: self-attention over a user's feature embeddings, a task-specific attention unit
  per task (the state-aware user embedding ``s_k``) and a preference head per task.
* :class:`BetaTracker`: the paper's Algorithm 1, a Beta distribution per user and task fed with the
  preference head's predictions, from which each sample's task loss weight ``gamma_k`` is drawn.
* :class:`EmbeddingProjector`: rows of an embedding seen during evaluation, with a label per row, for
  TensorBoard's embedding projector (``tensorboard_embeddings()``).
* :func:`state_loss`: the squared loss between the preference head and the user's history pseudo-label.

Shapes: B batch, F user features, D embedding width, T tasks.
"""

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import nn
from torch.distributions import Beta

from recsys.modules.multitask import task_towers

PREFERENCE = "preference/"  # output key prefix of the preference heads' logits


class TaskAttentionUnit(nn.Module):
    """``s_k = U' * softmax(W_k U') * n``: a per-sample soft selection of the state-aware user representation.

    The softmax runs over the ``n`` units of the flattened ``U'``; multiplying by ``n`` makes the average weight
    1, so ``s_k`` stays on the scale of ``U'`` (a constant factor a following linear layer could absorb).

    Shapes: [B, n] -> [B, n].
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)
        self.width = width

    def weights(self, u: torch.Tensor) -> torch.Tensor:
        """The attention weights [B, n] (rows sum to 1)."""
        return torch.softmax(self.linear(u), dim=-1)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return u * self.weights(u) * self.width


class UserStateBranch(nn.Module):
    """STAN's user preference learning.

    ``U' = LayerNorm(U + MultiheadAttention(U, U, U))`` over the user's F feature embeddings, flattened to
    ``[B, F * D]``; per task k a :class:`TaskAttentionUnit` gives the state-aware user embedding ``s_k`` and an
    MLP head on ``s_k`` the logit of the user's preference for task k (trained against the mean of the user's
    earlier labels of task k, see :func:`state_loss`).

    Args:
        num_features: F user features.
        dim: D, their (common) embedding width.
        tasks: task names.
        heads: attention heads (must divide D).
        head_hidden: hidden widths of each preference head.
        dropout: attention and head dropout.
        activation: of the preference heads' hidden layers.

    Shapes: [B, F, D] -> ``{task: [B, F * D]}`` (``s_k``) and ``{"preference/<task>": [B]}`` (logits).

    Example::

        branch = UserStateBranch(num_features=7, dim=16, tasks=["ctr", "cvr"])
        out = branch(user_embeddings)          # [B, 7, 16]
        s_ctr, logit = out["ctr"], out["preference/ctr"]    # [B, 112], [B]
    """

    def __init__(
        self,
        num_features: int,
        dim: int,
        tasks: Sequence[str],
        heads: int = 2,
        head_hidden: Sequence[int] = (32,),
        dropout: float = 0.0,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention heads ({heads}) must divide the embedding width ({dim})")
        self.tasks = list(tasks)
        self.attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.output_dim = num_features * dim
        self.units = nn.ModuleDict({t: TaskAttentionUnit(self.output_dim) for t in self.tasks})
        self.heads = task_towers({t: self.output_dim for t in self.tasks}, head_hidden, activation, dropout)

    def represent(self, u: torch.Tensor) -> torch.Tensor:
        """``U'`` flattened: [B, F, D] -> [B, F * D]."""
        attended, _ = self.attention(u, u, u, need_weights=False)
        return self.norm(u + attended).flatten(1)

    def forward(self, u: torch.Tensor) -> Dict[str, torch.Tensor]:
        state = self.represent(u)
        out: Dict[str, torch.Tensor] = {}
        for t in self.tasks:
            s = self.units[t](state)
            out[t] = s
            out[PREFERENCE + t] = self.heads[t](s).squeeze(-1)
        return out


def state_loss(preference_logit: torch.Tensor, target: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Mean squared error between ``sigmoid(logit)`` and the pseudo-label over rows where it is ``known``
    (0 when there are none). Shapes: [B], [B], [B] (bool or 0/1) -> scalar."""
    mask = known.to(target.dtype)
    err = (torch.sigmoid(preference_logit) - target) ** 2
    return (err * mask).sum() / mask.sum().clamp_min(1.0)


class BetaTracker(nn.Module):
    """Per user and task, a Beta distribution of the user's preference (STAN, Algorithm 1).

    State ``[num_users, T, 3]``: ``alpha`` and ``beta`` (both start at 1) and the number of samples the
    user's state has absorbed. A training sample of user u with time-order position ``c`` (its 1-based rank
    among u's samples by timestamp) and preference prediction ``p_k`` adds ``p_k * c`` to ``alpha_k`` and
    ``(1 - p_k) * c`` to ``beta_k``: Algorithm 1's ``counter`` is ``c``, which the data provides (one plus the
    number of u's strictly earlier training rows), so the state after a pass over u's samples is the
    algorithm's whatever order shuffled batches bring them in. ``gamma_k ~ Beta(alpha_k, beta_k)`` is drawn
    per sample after the batch's updates (no gradient; in evaluation, the distribution's mean, so evaluation
    draws no random numbers).

    Distributed: the state is a buffer replicated on every rank (torchrec's DMP wraps the dense part in DDP
    with ``broadcast_buffers=False``, so nothing synchronises it). Each training step all-gathers the batch's
    ``(user, c, p)`` from every rank and applies all of them on every rank, so replicas stay identical. The
    state costs ``12 * T`` bytes per user on every rank (3.6 GB at 10^8 users and 3 tasks); see docs/stan.md
    for sharding it like an embedding table.

    Args:
        num_users: rows of the user id table (encoded ids index the state; padding rows have user -1).
        tasks: task names (the order of the last dimension of ``p`` and of the result).

    Shapes: user [B] int64, position [B] float, p [B, T] in [0, 1] -> gamma [B, T].

    Example::

        tracker = BetaTracker(num_users=5000, tasks=["ctr", "stay", "cvr"])
        gamma = tracker(batch.user, batch.history["count"] + 1, torch.sigmoid(preference_logits))
    """

    state: torch.Tensor

    def __init__(self, num_users: int, tasks: Sequence[str]) -> None:
        super().__init__()
        self.tasks = list(tasks)
        state = torch.zeros(num_users, len(self.tasks), 3)
        state[:, :, :2] = 1.0
        self.register_buffer("state", state)
        self._last_gamma: Optional[torch.Tensor] = None

    @staticmethod
    def _all_ranks(tensors: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Concatenate every rank's ``tensors`` (rows may differ per rank; padded to the largest)."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return list(tensors)
        world = dist.get_world_size()
        rows = torch.tensor([tensors[0].shape[0]], device=tensors[0].device)
        sizes = [torch.zeros_like(rows) for _ in range(world)]
        dist.all_gather(sizes, rows)
        counts = [int(s) for s in sizes]
        most = max(counts)
        out = []
        for t in tensors:
            padded = t.new_zeros((most,) + tuple(t.shape[1:]))
            padded[: t.shape[0]] = t
            parts = [torch.empty_like(padded) for _ in range(world)]
            dist.all_gather(parts, padded.contiguous())
            out.append(torch.cat([p[:n] for p, n in zip(parts, counts)]))
        return out

    @torch.no_grad()
    def update(self, user: torch.Tensor, position: torch.Tensor, p: torch.Tensor) -> None:
        """Add the samples' contributions (every rank's, when distributed) to the state."""
        user, position, p = self._all_ranks([user, position.to(p.dtype), p])
        valid = user >= 0
        user, position, p = user[valid], position[valid].unsqueeze(1), p[valid]
        delta = torch.stack([p * position, (1.0 - p) * position, torch.ones_like(p)], dim=2)
        self.state.index_add_(0, user, delta.to(self.state.dtype))

    def distribution(self, user: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(alpha, beta)`` of each sample's user, [B, T] each (padding rows read user 0)."""
        s = self.state[user.clamp_min(0)]
        return s[:, :, 0], s[:, :, 1]

    @torch.no_grad()
    def forward(self, user: torch.Tensor, position: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        p = p.detach().float()
        if self.training:
            self.update(user, position, p)
        alpha, beta = self.distribution(user)
        gamma = Beta(alpha, beta, validate_args=False).sample() if self.training else alpha / (alpha + beta)
        self._last_gamma = gamma[user >= 0]
        return gamma

    def tensorboard_stats(self) -> Dict[str, torch.Tensor]:
        if self._last_gamma is None:
            return {}
        out = {f"gamma/{t}": self._last_gamma[:, i] for i, t in enumerate(self.tasks)}
        seen = self.state[:, 0, 2] > 0
        out["users_tracked"] = seen.sum().float()
        return out


class EmbeddingProjector(nn.Module):
    """Collects up to ``max_rows`` rows of an embedding during evaluation, with a label per row, and hands them
    to TensorBoard's embedding projector through ``tensorboard_embeddings()`` (the trainer calls it once per
    evaluation). Collection restarts whenever the module enters evaluation mode.

    Args:
        tag: projector tag.
        label_names: display name of each label index (e.g. lifecycle stages).
        max_rows: rows kept per evaluation.

    Shapes: x [B, D], labels [B] int64, keep [B] bool -> nothing (x is only recorded).
    """

    def __init__(self, tag: str, label_names: Sequence[str], max_rows: int = 1000) -> None:
        super().__init__()
        self.tag = tag
        self.label_names = list(label_names)
        self.max_rows = max_rows
        self._rows: List[torch.Tensor] = []
        self._labels: List[torch.Tensor] = []

    def train(self, mode: bool = True) -> "EmbeddingProjector":
        if not mode:
            self._rows, self._labels = [], []
        return super().train(mode)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor) -> None:
        if self.training:
            return
        have = sum(r.shape[0] for r in self._rows)
        if have >= self.max_rows:
            return
        x, labels = x[keep][: self.max_rows - have], labels[keep][: self.max_rows - have]
        self._rows.append(x.detach().float().cpu())
        self._labels.append(labels.detach().cpu())

    def tensorboard_embeddings(self) -> Dict[str, Tuple[torch.Tensor, List[str]]]:
        """``{tag: (rows [N, D], one label name per row)}``; empty before any evaluation."""
        if not self._rows:
            return {}
        labels = torch.cat(self._labels).tolist()
        names = [self.label_names[i] if 0 <= i < len(self.label_names) else str(i) for i in labels]
        return {self.tag: (torch.cat(self._rows), names)}
