"""The synthetic world: a pure function of its config, and the per-user slopes option changes exactly the
click probability, by the documented formula."""

import numpy as np
import pytest

from recsys.data.synthetic import World, WorldConfig, _sigmoid
from recsys.errors import ConfigError

SMALL = dict(rows=3000, users=300, hosts=40, items=200)


def test_rows_are_a_pure_function_of_the_config_and_range():
    world = World(WorldConfig(**SMALL))
    a = world.impressions(1000, 1500).to_pandas()
    b = World(WorldConfig(**SMALL)).impressions(1000, 1500).to_pandas()
    assert a.equals(b)
    assert a["row_id"].tolist() == list(range(1000, 1500))


def test_personal_slopes_change_only_the_click_probability_by_the_formula():
    base = World(WorldConfig(**SMALL)).impressions(0, 2000).to_pandas()
    slopes = World(WorldConfig(**SMALL, personal_slopes=0.7)).impressions(0, 2000).to_pandas()
    features = [c for c in base.columns if c not in ("p_click", "click", "stay_time", "order")]
    assert base[features].equals(slopes[features])
    user = World(WorldConfig(**SMALL)).users(base["user_id"].to_numpy())
    logit = np.log(base["p_click"] / (1 - base["p_click"]))
    expected = _sigmoid(logit + 0.7 * (user["position_slope"] * (np.log1p(base["position"]) - 1.0)
                                       + user["level_slope"] * (base["host_level"] - 1.0)))
    np.testing.assert_allclose(slopes["p_click"], expected, rtol=1e-6)
    # the slopes are per user: two users at the same position and host level get different shifts
    assert np.std(user["position_slope"]) > 0.5


def test_personal_slopes_must_be_finite_and_non_negative():
    with pytest.raises(ConfigError, match="personal_slopes"):
        World(WorldConfig(**SMALL, personal_slopes=-1.0))
    with pytest.raises(ConfigError, match="personal_slopes"):
        World(WorldConfig(**SMALL, personal_slopes=float("nan")))
