"""A synthetic live-streaming world with a known ground truth.

Users watch hosts (streamers) who sell items, in several scenes (scenarios). Each impression gets a click, a
stay time (seconds, only after a click) and an order (only after a click) drawn from known probabilities, which
are stored beside the labels (``p_click``, ``p_order`` given a click, ``e_stay``) so evaluation can print the
oracle AUC next to each model's.

Every entity attribute is a deterministic hash of its id, so the world scales to 10^8 ids without tables in
memory, and impressions are written in Parquet chunks, so it scales to 10^8 rows.

Ground truth (u, h, v: latent vectors of user, host, item; s: scene; st: lifecycle stage at the impression's
time)::

    ctr logit   = b_scene[s] + b_stage[st] + user_bias + host_bias
                  + a_stage[st] * <u, h>          # personal interest, strength depends on the stage
                  + c * u^T A_s h                 # scene-specific interest (A_s differs per scene)
                  + pos_slope[s] * log1p(position) + hour effect + interest-match bonus
    log stay    = m_stage[st] + 0.4 <u, h> + host quality + scene offset + noise
    order logit = o_stage[st] + 0.6 <u, v> + 0.4 <u, h> - 0.3 (log price - 3) + o_scene[s]

Why models differ here:
    * <u, h> and u^T A_s h are multiplicative: an MLP over concatenated embeddings has to approximate them,
      gates and calibration (MlpCB, EmbCB, PEPNet) that scale hidden units per sample can express them
      directly, and the wide part (first-order only) not at all. Measured: the gated models converge faster
      (CBMR leads Wide&Deep at a 5-epoch budget) but tie with it at the full budget
      (benchmarks/results/quality/cbmr.md, cbmr_full.md), so the MLP does learn them given time.
    * optionally (``personal_slopes`` > 0, ``recsys generate --personal-slopes``) every user also has their own
      sensitivity to the feed position and the host's level: per-user parameters on context features, the
      case sample-adaptive models are built for (benchmarks/grids/cbmr_slopes.py; measured at 0.5: CBMR
      converges faster there too and again ends level with Wide&Deep at the full budget).
    * the lifecycle stage changes the trade-off between tasks: new users click by popularity (weak
      personalisation), wandering users dwell long but rarely buy, sticky and loyal users convert and stay
      shorter. The stage is a function of tenure (days since registration) and a per-user destiny, so it can
      be inferred from the tenure features and the user's history but is not itself a feature.
    * scenes share <u, h> but each adds its own A_s, base rate and position bias, and scenes differ in size
      (the smallest has ~8% of the traffic), so sharing across scenes helps the small ones.
"""

import json
import logging
import os
from dataclasses import asdict, dataclass
from typing import Dict, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.console import Progress
from recsys.data.splits import splitmix64
from recsys.errors import ConfigError

log = logging.getLogger(__name__)

STAGES = ("new", "wandering", "sticky", "loyal")
SCENES = ("feed", "follow", "nearby", "search")
TENURE_BOUNDARIES = (1, 3, 7, 14, 30, 60, 120)
# run-config overrides that turn the world's other tasks (stay time, conversion) off: CTR models as CBMR's paper
# trains them (the demo and the cbmr_ctr grid)
CTR_ONLY = ["train.task_weights.stay=0", "train.task_weights.cvr=0"]


@dataclass
class WorldConfig:
    """Size and seed of the synthetic world.

    Args:
        rows: impressions to write.
        users, hosts, items: id space sizes (10^3 .. 10^8).
        scenes: number of scenes (up to 4 named ones; more are numbered).
        days: time span of the impressions.
        latent_dim: width of the hidden user/host/item vectors.
        seed: everything is a function of the seed.
        rows_per_file: impressions per Parquet file.
        personal_slopes: strength of per-user slopes on context: each user has their own sensitivity to the
            feed position and to the host's level (ctr logit += personal_slopes * (a_u * (log1p(position) - 1)
            + b_u * (host_level - 1)), a_u, b_u ~ N(0, 1)). 0 (the default) leaves them out and writes exactly
            the default world; > 0 is a world where "one sample, one model" (per-user parameters) should pay.
    """

    rows: int = 500_000
    users: int = 5_000
    hosts: int = 500
    items: int = 3_000
    scenes: int = 4
    days: int = 30
    latent_dim: int = 8
    seed: int = 0
    rows_per_file: int = 1_000_000
    personal_slopes: float = 0.0

    def validate(self) -> None:
        for name in ("rows", "users", "hosts", "items", "scenes", "days", "latent_dim", "rows_per_file"):
            if getattr(self, name) < 1:
                raise ConfigError(f"generate: '{name}' must be >= 1")
        if self.scenes > 16:
            raise ConfigError("generate: at most 16 scenes")
        if not 0.0 <= self.personal_slopes < float("inf"):
            raise ConfigError(f"generate: 'personal_slopes' must be a finite number >= 0, got {self.personal_slopes}")


def _uniform(ids: np.ndarray, salt: int, seed: int) -> np.ndarray:
    """Uniform [0, 1) attribute ``salt`` of entity ``ids`` (deterministic)."""
    key = splitmix64(np.array([seed * 1_000_003 + salt], dtype=np.uint64))
    with np.errstate(over="ignore"):
        h = splitmix64(ids.astype(np.uint64) ^ key)
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _normal(ids: np.ndarray, salt: int, seed: int) -> np.ndarray:
    u1 = np.maximum(_uniform(ids, 2 * salt, seed), 1e-12)
    u2 = _uniform(ids, 2 * salt + 1, seed)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2 * np.pi * u2)


def _vectors(ids: np.ndarray, salt: int, dim: int, seed: int, scale: float) -> np.ndarray:
    return np.stack([_normal(ids, salt * 64 + k, seed) for k in range(dim)], axis=1) * scale


def _zipf_ranks(rng: np.random.Generator, n: int, size: int, a: float) -> np.ndarray:
    """Ranks in [0, n) with P(rank) ~ (rank + 1)^-a (continuous bounded power law, inverted)."""
    u = rng.random(size)
    if abs(a - 1.0) < 1e-9:
        x = np.power(n + 1.0, u)
    else:
        x = np.power(u * (np.power(n + 1.0, 1 - a) - 1.0) + 1.0, 1.0 / (1 - a))
    return np.minimum(np.floor(x).astype(np.int64) - 1, n - 1)


def _permute(ranks: np.ndarray, n: int, salt: int) -> np.ndarray:
    """A fixed bijection of [0, n) so that popular ids are spread over the id space."""
    mult = 2654435761
    while np.gcd(mult, n) != 1:
        mult += 2
    return (ranks * mult + salt * 7919) % n


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class World:
    """The world's fixed parameters (scene matrices, stage effects) and its impression sampler."""

    # per lifecycle stage: ctr bias, personalisation strength, log-stay mean, order bias
    B_STAGE = np.array([-0.5, 0.15, 0.35, 0.25])
    A_STAGE = np.array([0.3, 0.8, 1.2, 1.6])
    M_STAGE = np.array([3.0, 4.3, 3.7, 3.3])
    O_STAGE = np.array([-3.0, -3.6, -1.9, -1.4])
    N_HOST_CATEGORIES = 20
    N_ITEM_CATEGORIES = 50
    N_CITIES = 60

    def __init__(self, cfg: WorldConfig) -> None:
        cfg.validate()
        self.cfg = cfg
        rng = np.random.default_rng([cfg.seed, 7])
        k = cfg.latent_dim
        s = cfg.scenes
        self.scene_probs = np.array([0.45, 0.27, 0.2, 0.08][:s] if s <= 4 else np.full(s, 1.0 / s))
        self.scene_probs = self.scene_probs / self.scene_probs.sum()
        self.b_scene = np.array([-3.0, -2.4, -3.3, -2.7] + [-3.0] * 12)[:s]
        self.pos_slope = np.array([-0.3, -0.1, -0.4, -0.15] + [-0.2] * 12)[:s]
        self.o_scene = np.array([0.0, 0.3, -0.4, 0.6] + [0.0] * 12)[:s]
        self.stay_scene = np.array([0.0, 0.3, -0.2, -0.4] + [0.0] * 12)[:s]
        self.A = rng.normal(0, 1.0 / np.sqrt(k), size=(s, k, k))
        self.category_vecs = rng.normal(0, 0.8, size=(self.N_HOST_CATEGORIES, k))
        # group-level tastes: users of the same age group, gender, city cluster and device share part of theirs
        self.g_age = rng.normal(0, 0.35, size=(7, k))
        self.g_gender = rng.normal(0, 0.25, size=(3, k))
        self.g_city = rng.normal(0, 0.25, size=(12, k))
        self.g_device = rng.normal(0, 0.15, size=(4, k))
        hours = np.arange(24)
        self.hour_effect = 0.25 * np.cos((hours - 21) / 24 * 2 * np.pi)

    # --- entities ----------------------------------------------------------------------------------------
    def users(self, ids: np.ndarray) -> Dict[str, np.ndarray]:
        seed, k = self.cfg.seed, self.cfg.latent_dim
        u = _uniform
        age_group = np.floor(u(ids, 3, seed) * 7).astype(np.int64)
        gender = np.where(u(ids, 4, seed) < 0.04, 2, np.floor(u(ids, 5, seed) * 2)).astype(np.int64)
        city = np.floor(np.square(u(ids, 6, seed)) * self.N_CITIES).astype(np.int64)
        device = np.floor(u(ids, 7, seed) * 4).astype(np.int64)
        # taste = what the user's demographic groups share + an individual part
        vec = (
            self.g_age[age_group]
            + self.g_gender[gender]
            + self.g_city[city % len(self.g_city)]
            + self.g_device[device]
            + _vectors(ids, 1, k, seed, 0.3)
        )
        interest = np.argmax(vec @ self.category_vecs.T, axis=1)
        return {
            "vec": vec,
            "bias": 0.35 * _normal(ids, 2, seed),
            "age_group": age_group,
            "gender": gender,
            "city": city,
            "device": device,
            "register_day": -90.0 + 120.0 * u(ids, 8, seed),
            "destiny": np.digitize(u(ids, 9, seed), [0.3, 0.6]) + 1,  # 1 wandering, 2 sticky, 3 loyal
            "tau_sticky": 4.0 + 16.0 * u(ids, 10, seed),
            "tau_loyal": 14.0 + 30.0 * u(ids, 11, seed),
            "interest": interest,
            "interest2": np.floor(u(ids, 12, seed) * self.N_HOST_CATEGORIES).astype(np.int64),
            "has_interest2": u(ids, 13, seed) < 0.6,
            "position_slope": _normal(ids, 14, seed),
            "level_slope": _normal(ids, 15, seed),
        }

    def hosts(self, ids: np.ndarray) -> Dict[str, np.ndarray]:
        seed, k = self.cfg.seed, self.cfg.latent_dim
        category = np.floor(_uniform(ids, 21, seed) * self.N_HOST_CATEGORIES).astype(np.int64)
        level = np.minimum(np.floor(-np.log(np.maximum(_uniform(ids, 22, seed), 1e-12)) * 1.2), 4).astype(np.int64)
        return {
            "vec": 0.7 * self.category_vecs[category] + _vectors(ids, 23, k, seed, 0.35),
            "bias": 0.35 * _normal(ids, 24, seed) + 0.12 * level,
            "category": category,
            "level": level,
            "followers": np.exp(4.0 + 1.5 * level + 0.8 * _normal(ids, 25, seed)),
        }

    def items(self, ids: np.ndarray) -> Dict[str, np.ndarray]:
        seed, k = self.cfg.seed, self.cfg.latent_dim
        return {
            "vec": _vectors(ids, 31, k, seed, 0.5),
            "category": np.floor(_uniform(ids, 32, seed) * self.N_ITEM_CATEGORIES).astype(np.int64),
            "price": np.round(np.exp(3.0 + 1.0 * _normal(ids, 33, seed)), 2),
        }

    @staticmethod
    def stage_of(user: Dict[str, np.ndarray], day: np.ndarray) -> np.ndarray:
        tenure = np.maximum(day - user["register_day"], 0.0)
        stage = np.where(tenure < 3.0, 0, 1)
        stage = np.where((tenure >= user["tau_sticky"]) & (user["destiny"] >= 2), 2, stage)
        stage = np.where((tenure >= user["tau_sticky"] + user["tau_loyal"]) & (user["destiny"] >= 3), 3, stage)
        return stage.astype(np.int64)

    # --- impressions -------------------------------------------------------------------------------------
    def impressions(self, start: int, stop: int) -> pa.Table:
        """Rows ``[start, stop)`` of the world (a pure function of the config and the range)."""
        cfg = self.cfg
        n = stop - start
        rng = np.random.default_rng([cfg.seed, start])
        row = np.arange(start, stop, dtype=np.int64)
        day = (row + rng.random(n)) / cfg.rows * cfg.days
        ts = np.floor(1_700_000_000 + day * 86400).astype(np.int64)

        user_id = _permute(_zipf_ranks(rng, cfg.users, n, 0.7), cfg.users, 1)
        host_id = _permute(_zipf_ranks(rng, cfg.hosts, n, 1.05), cfg.hosts, 2)
        item_id = (host_id * 7 + rng.integers(0, 8, n)) % cfg.items
        scene = rng.choice(cfg.scenes, size=n, p=self.scene_probs)
        hour = np.floor((day % 1.0) * 24).astype(np.int64)
        position = np.minimum(rng.geometric(0.18, n) - 1, 19)
        network = rng.choice(3, size=n, p=[0.6, 0.3, 0.1])

        U, H, V = self.users(user_id), self.hosts(host_id), self.items(item_id)
        stage = self.stage_of(U, day)
        tenure = np.maximum(day - U["register_day"], 0.0)
        uh = np.einsum("nk,nk->n", U["vec"], H["vec"])
        uAh = np.einsum("nk,nkl,nl->n", U["vec"], self.A[scene], H["vec"])
        uv = np.einsum("nk,nk->n", U["vec"], V["vec"])
        match = (H["category"] == U["interest"]) | (U["has_interest2"] & (H["category"] == U["interest2"]))

        ctr_logit = (
            self.b_scene[scene]
            + self.B_STAGE[stage]
            + U["bias"]
            + H["bias"]
            + self.A_STAGE[stage] * uh
            + 0.8 * uAh
            + self.pos_slope[scene] * np.log1p(position)
            + self.hour_effect[hour]
            + 0.3 * match
        )
        if cfg.personal_slopes:
            ctr_logit = ctr_logit + cfg.personal_slopes * (
                U["position_slope"] * (np.log1p(position) - 1.0) + U["level_slope"] * (H["level"] - 1.0)
            )
        p_click = _sigmoid(ctr_logit)
        click = (rng.random(n) < p_click).astype(np.int64)

        log_stay_mean = self.M_STAGE[stage] + 0.4 * uh + 0.15 * H["level"] + self.stay_scene[scene]
        stay_sigma = 0.6
        stay = np.clip(np.exp(log_stay_mean + stay_sigma * rng.standard_normal(n)), 1.0, 7200.0)
        stay = np.where(click == 1, np.round(stay, 1), 0.0)
        e_stay = np.exp(log_stay_mean + stay_sigma**2 / 2)

        order_logit = self.O_STAGE[stage] + 1.0 * uv + 0.5 * uh - 0.3 * (np.log(V["price"]) - 3.0) + self.o_scene[scene]
        p_order = _sigmoid(order_logit)
        order = click * (rng.random(n) < p_order).astype(np.int64)

        second = U["has_interest2"] & (U["interest2"] != U["interest"])
        lengths = 1 + second.astype(np.int64)
        offsets = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.empty(offsets[-1], dtype=np.int64)
        flat[offsets[:-1]] = U["interest"]
        flat[offsets[:-1][second] + 1] = U["interest2"][second]
        user_interests = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))

        return pa.table(
            {
                "row_id": row,
                "ts": ts,
                "user_id": user_id,
                "age_group": U["age_group"],
                "gender": U["gender"],
                "city": U["city"],
                "device": U["device"],
                "tenure_days": np.round(tenure, 2),
                "tenure_bucket": np.searchsorted(np.asarray(TENURE_BOUNDARIES), tenure, side="right"),
                "user_interests": user_interests,
                "host_id": host_id,
                "host_category": H["category"],
                "host_level": H["level"],
                "host_followers": np.round(H["followers"]),
                "item_id": item_id,
                "item_category": V["category"],
                "item_price": V["price"],
                "scene": scene,
                "hour": hour,
                "position": position,
                "network": network,
                "stage": stage,
                "click": click,
                "stay_time": stay,
                "order": order,
                "p_click": p_click.astype(np.float32),
                "p_order": p_order.astype(np.float32),
                "e_stay": e_stay.astype(np.float32),
            }
        )


def generate(cfg: WorldConfig, out_dir: str, progress: bool = True, overwrite: bool = False) -> Dict[str, object]:
    """Write the world's impressions to ``out_dir`` as Parquet files plus ``world.json`` (its config and
    summary statistics). The folder is filled under a temporary name and renamed at the end, so an
    interrupted run leaves nothing half-written."""
    cfg.validate()
    if os.path.exists(out_dir) and os.listdir(out_dir) and not overwrite:
        raise ConfigError(f"{out_dir}: already exists and is not empty (use --overwrite)")
    world = World(cfg)
    tmp = out_dir.rstrip("/") + ".tmp"
    if os.path.isdir(tmp):
        import shutil

        shutil.rmtree(tmp)
    os.makedirs(tmp)
    sums = {"click": 0.0, "order": 0.0, "stay": 0.0}
    stage_counts = np.zeros(len(STAGES), dtype=np.int64)
    scene_counts = np.zeros(cfg.scenes, dtype=np.int64)
    chunk = min(cfg.rows_per_file, 250_000)
    with Progress("generate", cfg.rows, unit="row", enabled=progress, unit_scale=True) as bar:
        for file_index, file_start in enumerate(range(0, cfg.rows, cfg.rows_per_file)):
            file_stop = min(file_start + cfg.rows_per_file, cfg.rows)
            path = os.path.join(tmp, f"part-{file_index:05d}.parquet")
            writer: Optional[pq.ParquetWriter] = None
            for start in range(file_start, file_stop, chunk):
                table = world.impressions(start, min(start + chunk, file_stop))
                if writer is None:
                    writer = pq.ParquetWriter(path, table.schema, compression="zstd")
                writer.write_table(table, row_group_size=131_072)
                click = table.column("click").to_numpy()
                sums["click"] += float(click.sum())
                sums["order"] += float(table.column("order").to_numpy().sum())
                sums["stay"] += float(table.column("stay_time").to_numpy().sum())
                stage_counts += np.bincount(table.column("stage").to_numpy(), minlength=len(STAGES))
                scene_counts += np.bincount(table.column("scene").to_numpy(), minlength=cfg.scenes)
                bar.update(table.num_rows)
            assert writer is not None
            writer.close()
    summary = {
        "config": asdict(cfg),
        "ctr": sums["click"] / cfg.rows,
        "cvr_given_click": sums["order"] / max(sums["click"], 1.0),
        "mean_stay_given_click": sums["stay"] / max(sums["click"], 1.0),
        "stage_share": dict(zip(STAGES, (stage_counts / cfg.rows).round(4).tolist())),
        "scene_share": dict(zip(scene_names(cfg.scenes), (scene_counts / cfg.rows).round(4).tolist())),
    }
    with open(os.path.join(tmp, "world.json"), "w") as f:
        json.dump(summary, f, indent=1)
    if os.path.isdir(out_dir):
        import shutil

        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return summary


def scene_names(n: int):
    return [SCENES[i] if i < len(SCENES) else f"scene{i}" for i in range(n)]
