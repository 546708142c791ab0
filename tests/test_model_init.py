"""Every model's initial weights and state-dict keys are fixed: the same seed builds the same model.

Quality figures (docs/benchmarks.md) are reproduced from ``torch.manual_seed(seed)`` before ``build_model``, and
checkpoints of earlier runs are loaded by state-dict key. So a refactoring of the model code must keep, for every
model and option set, (1) the key names, shapes and dtypes of the state dict, (2) the order in which parameters
draw their initial values from the RNG and (3) how many numbers the build draws. The expected fingerprints below
were computed from the code before the models were recomposed from shared blocks; a change of them is a change
of behaviour and must be deliberate (recompute with
``python tests/test_model_init.py > tests/model_init_fingerprints.json``).

The schema mirrors the synthetic live-streaming world (configs/datasets/synthetic.yaml) with small tables; the
cases are every registered model with its defaults, every model of the benchmark grids and shipped configs, and
variants reaching the other construction branches (activations with parameters, dropout shifting layer indices,
optional parts switched off).
"""

import hashlib
import json
import os
import sys
from typing import Any, Dict, List, Tuple

import pytest
import torch

from recsys.config import ModelConfig
from recsys.models import build_model, model_names
from recsys.schema import DenseFeature, Schema, SparseFeature, Task

_GROUPS = [("user_id", "user", 40), ("age_group", "user", 7), ("gender", "user", 3), ("city", "user", 11),
           ("device", "user", 4), ("tenure_bucket", "user", 6), ("user_interests", "user", 9),
           ("host_id", "host", 13), ("host_category", "host", 5), ("host_level", "host", 4),
           ("item_id", "item", 17), ("item_category", "item", 6), ("hour", "context", 24),
           ("position", "context", 10), ("network", "context", 3), ("scene_id", "scenario", 4)]
SCHEMA = Schema(
    sparse=tuple(SparseFeature(name, rows, 16, group=group, multi_hot=name == "user_interests",
                               pooling="mean" if name == "user_interests" else "sum")
                 for name, group, rows in _GROUPS),
    dense=(DenseFeature("tenure_days"), DenseFeature("host_followers"), DenseFeature("item_price")),
    tasks=(Task("ctr"), Task("stay", kind="regression", depends_on="ctr", loss="log_mse", eval_threshold=60.0),
           Task("cvr", depends_on="ctr")),
    num_scenarios=4,
    scenario_names=("feed", "follow", "nearby", "search"),
    user_feature="user_id",
    scenario_feature="scene_id",
    eval_groups=(("stage", ("new", "wandering", "sticky", "loyal")),),
    history_tasks=("ctr", "stay", "cvr"),
)

_CAL = {"ctr_hidden": [256, 128, 64], "cvr_hidden": [256, 128, 64], "calibrate_layer": 1}
_MTS = {"hidden": [256, 128], "tower_hidden": [64]}
_STAN = {"expert_hidden": [128, 64], "specific_experts": 1, "shared_experts": 1, "tower_hidden": [64]}
_SEARCH = {"kl_weight": 0.01, "eps": 0.5, "temperature_start": 1.0, "temperature_end": 10.0, "anneal_steps": 1000,
           "mask_lr": 0.001}

# (case name, model, params): defaults, the benchmark grids and shipped configs, then construction branches
CASES: List[Tuple[str, str, Dict[str, Any]]] = [
    (f"{name}/defaults", name, {}) for name in (
        "calibration4cvr", "cbmr", "dcn", "dcn_mts", "deepfm", "deepfm_mts", "dffm", "dnn", "dnn_mts", "esmm",
        "hmoe", "mmoe", "multicbmr", "pepnet", "ple", "shared_bottom", "single_task", "ssim", "ssim_search",
        "stan", "star", "wide_deep")
] + [
    # benchmarks/grids and configs/*.yaml
    *[(f"calibration4cvr/{s}", "calibration4cvr", dict(_CAL, structure=s))
      for s in ("ctr_mlp", "ctr_scaled", "cvr_se", "cvr_se_concat")],
    ("cbmr/grid", "cbmr", {"hidden": [256, 128, 64]}),
    ("cbmr/dropout", "cbmr", {"hidden": [256, 128, 64], "dropout": 0.1}),
    ("cbmr/senet", "cbmr", {"hidden": [256, 128, 64], "embcb": {"design": "senet", "output_activation": "sigmoid"}}),
    ("cbmr/mlpcb_only", "cbmr", {"hidden": [256, 128, 64], "embcb": {"enabled": False}}),
    ("cbmr/k2", "cbmr", {"hidden": [256, 128, 64], "embcb": {"num_vectors": 2}}),
    ("cbmr/relu", "cbmr", {"hidden": [256, 128, 64], "embcb": {"output_activation": "relu"}}),
    ("cbmr/embcb_only", "cbmr", {"hidden": [256, 128, 64], "mlpcb": {"enabled": False}}),
    ("cbmr/parallel", "cbmr", {"hidden": [256, 128, 64], "mlpcb": {"serial": False}}),
    ("dcn/grid", "dcn", {"hidden": [256, 128, 64]}),
    ("dcn_mts/grid", "dcn_mts", _MTS),
    ("deepfm/grid", "deepfm", {"hidden": [256, 128, 64]}),
    ("deepfm_mts/grid", "deepfm_mts", _MTS),
    ("dffm/grid", "dffm", {"hidden": [256, 128, 64]}),
    ("dnn/grid", "dnn", {"hidden": [256, 128, 64]}),
    ("dnn_mts/grid", "dnn_mts", _MTS),
    ("esmm/grid", "esmm", {"hidden": [256, 128, 64]}),
    ("hmoe/grid", "hmoe", {"expert_hidden": [256, 128], "num_experts": 4, "tower_hidden": [64]}),
    ("mmoe/grid", "mmoe", {"expert_hidden": [256, 128], "num_experts": 4, "tower": [64]}),
    ("multicbmr/uncalibrated", "multicbmr", {"embcb": {"enabled": False}, "mlpcb": {"enabled": False}}),
    ("multicbmr/config", "multicbmr", {"num_experts": 4, "expert_hidden": [256, 128], "tower_hidden": [64],
                                       "expert_specific": False, "embcb": {"num_vectors": 16},
                                       "mlpcb": {"serial": True}}),
    ("pepnet/grid", "pepnet", {"hidden": [256, 128, 64]}),
    ("ple/grid", "ple", {"expert_hidden": [256, 128], "levels": 2, "shared_experts": 1, "specific_experts": 1,
                         "tower": [64]}),
    ("shared_bottom/grid", "shared_bottom", {"bottom": [256, 128], "tower": [64]}),
    ("single_task/grid", "single_task", {"hidden": [256, 128, 64]}),
    *[(f"ssim/{b}", "ssim", {"backbone": b, "backbone_params": _MTS, "shared_column": "shared"})
      for b in ("dcn_mts", "deepfm_mts", "dnn_mts")],
    ("ssim/hmoe", "ssim", {"backbone": "hmoe", "backbone_params": {"expert_hidden": [256, 128], "num_experts": 4,
                                                                   "tower_hidden": [64]}, "shared_column": "shared"}),
    ("ssim/star", "ssim", {"backbone": "star", "backbone_params": {"hidden": [256, 128, 64]},
                           "shared_column": "shared"}),
    ("ssim_search/config", "ssim_search", {"backbone": "dnn_mts", "backbone_params": _MTS, **_SEARCH}),
    *[(f"stan/{w}", "stan", dict(_STAN, loss_weighting=w)) for w in ("beta", "none", "prediction")],
    ("stan/no_branch", "stan", dict(_STAN, state_branch=False)),
    ("stan/config", "stan", dict(_STAN, backbone="ple", loss_weighting="beta")),
    ("star/grid", "star", {"hidden": [256, 128, 64]}),
    ("wide_deep/grid", "wide_deep", {"hidden": [256, 128, 64]}),
    ("wide_deep/dropout", "wide_deep", {"hidden": [256, 128, 64], "dropout": 0.1}),
    ("wide_deep/movielens", "wide_deep", {"hidden": [128, 64], "dropout": 0.1}),
    ("wide_deep/billion", "wide_deep", {"hidden": [512, 256, 128]}),
    # construction branches: parametrised activations, dropout (layer indices), norms, parts switched off
    ("calibration4cvr/prelu_scaled", "calibration4cvr", dict(_CAL, structure="ctr_scaled", activation="prelu",
                                                               dropout=0.1, calibration_dim=24)),
    ("calibration4cvr/prelu_se", "calibration4cvr", dict(_CAL, structure="cvr_se_concat", activation="prelu",
                                                           se_reduction=2, pos_calibration=False)),
    ("calibration4cvr/no_pos", "calibration4cvr", dict(_CAL, structure="ctr_mlp", bias_features=[],
                                                        use_dense=False, calibrate_layer=0)),
    ("cbmr/prelu_batch", "cbmr", {"hidden": [32, 16], "activation": "prelu", "norm": "batch", "dropout": 0.1,
                                  "deep_features": ["user_id", "item_id"], "wide_features": ["hour"],
                                  "embcb": {"granularity": "field_dim"}, "mlpcb": {"features": ["hour"]}}),
    ("dcn/v2", "dcn", {"version": "v2", "hidden": [32], "norm": "layer"}),
    ("dcn/v2_low_rank", "dcn", {"version": "v2", "low_rank": 8, "cross_layers": 2, "use_dense": False}),
    ("dcn_mts/v2_prelu", "dcn_mts", {"version": "v2", "low_rank": 4, "activation": "prelu", "dropout": 0.1,
                                     "tower_hidden": [16, 8]}),
    ("deepfm/batch", "deepfm", {"hidden": [32, 16], "norm": "batch", "activation": "prelu", "use_dense": False}),
    ("deepfm_mts/prelu", "deepfm_mts", {"hidden": [32], "tower_hidden": [16], "activation": "prelu",
                                        "dropout": 0.1, "norm": "layer"}),
    ("dffm/variant", "dffm", {"micro_hidden": 4, "micro_out": 3, "interaction_features": ["user_id", "item_id",
                                                                                          "hour"],
                              "norm": "layer", "activation": "gelu", "use_dense": False}),
    ("dnn/prelu_layer", "dnn", {"hidden": [32, 16], "activation": "prelu", "norm": "layer", "dropout": 0.1,
                                "features": ["user_id", "item_id"]}),
    ("dnn/no_dense", "dnn", {"hidden": [], "use_dense": False}),
    ("dnn_mts/prelu_dropout", "dnn_mts", {"hidden": [32], "tower_hidden": [16, 8], "activation": "prelu",
                                          "dropout": 0.1, "norm": "batch"}),
    ("dnn_mts/no_tower", "dnn_mts", {"hidden": [16], "tower_hidden": []}),
    ("esmm/variant", "esmm", {"hidden": [32, 16], "extra_hidden": [], "activation": "prelu", "dropout": 0.1,
                              "cvr_embedding_grad": 0.5, "ctr_cvr_ratio": 1.0, "features": ["user_id", "item_id"]}),
    ("hmoe/prelu", "hmoe", {"num_experts": 3, "expert_hidden": [16, 8], "tower_hidden": [8], "activation": "prelu",
                            "dropout": 0.1, "use_dense": False}),
    ("mmoe/prelu", "mmoe", {"num_experts": 2, "expert_hidden": [16], "tower": [8, 4], "activation": "prelu",
                            "dropout": 0.1}),
    ("mmoe/linear_towers", "mmoe", {"num_experts": 3, "expert_hidden": [16, 8], "tower": []}),
    ("multicbmr/expert_specific", "multicbmr", {"expert_specific": True, "num_experts": 3,
                                                "expert_hidden": [16, 8], "tower_hidden": [8, 4],
                                                "activation": "prelu", "dropout": 0.1}),
    ("multicbmr/no_wide", "multicbmr", {"wide": False, "use_dense": False, "mlpcb": {"serial": False,
                                                                                     "features": ["hour"]}}),
    ("pepnet/field_dim", "pepnet", {"hidden": [32, 16], "epnet_granularity": "field_dim", "activation": "prelu",
                                    "dropout": 0.1, "gate_hidden": 8}),
    ("pepnet/no_epnet", "pepnet", {"hidden": [16], "epnet": False, "prior_features": ["user_id"]}),
    ("pepnet/no_ppnet", "pepnet", {"hidden": [16], "ppnet": False, "domain_features": ["hour"]}),
    ("ple/prelu", "ple", {"levels": 3, "specific_experts": 2, "shared_experts": 0, "expert_hidden": [16],
                          "tower": [8], "activation": "prelu", "dropout": 0.1}),
    ("shared_bottom/prelu", "shared_bottom", {"bottom": [16, 8], "tower": [], "activation": "prelu",
                                              "dropout": 0.1, "use_dense": False}),
    ("single_task/variant", "single_task", {"hidden": [16], "bias_hidden": [4, 4], "activation": "prelu",
                                            "dropout": 0.1, "embedding_grad": {"ctr": 0.0},
                                            "ctr_cvr_ratio": 1.0}),
    ("single_task/no_bias", "single_task", {"hidden": [16], "bias_features": []}),
    ("ssim_search/star", "ssim_search", {"backbone": "star", "backbone_params": {"hidden": [16]},
                                         "selection_hidden": [8, 4]}),
    ("stan/mmoe", "stan", dict(_STAN, backbone="mmoe", num_experts=3, dropout=0.1)),
    ("stan/mmoe_no_branch", "stan", dict(_STAN, backbone="mmoe", state_branch=False)),
    ("stan/levels", "stan", dict(_STAN, levels=2, shared_experts=0, projector_rows=0,
                                 user_features=["age_group", "gender"], attention_heads=4)),
    ("star/prelu", "star", {"hidden": [16, 8], "aux_hidden": [4], "activation": "prelu", "dropout": 0.1,
                            "aux_features": [], "scenario_dim": 4}),
    ("wide_deep/prelu", "wide_deep", {"hidden": [16], "activation": "prelu", "norm": "batch", "use_dense": False}),
]

# case -> [digest of the state-dict keys, shapes and dtypes; weighted sum of the initial values; next random]
EXPECTED_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "model_init_fingerprints.json")
with open(EXPECTED_FILE) as f:
    EXPECTED: Dict[str, List[Any]] = json.load(f)


def fingerprint(name: str, params: Dict[str, Any]) -> List[Any]:
    """[keys digest, weighted checksum of every materialised tensor, the first random number after the build]."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, params=params), SCHEMA)
    after = float(torch.rand(()))
    state = model.state_dict()
    keys = "\n".join(f"{k} {tuple(v.shape)} {v.dtype}" for k, v in state.items())
    total = 0.0
    for i, value in enumerate(state.values()):
        if value.is_meta:  # the embedding tables: DMP materialises them on their ranks
            continue
        flat = value.detach().flatten().double()
        weights = (i + 1) * (1.0 + torch.arange(flat.numel(), dtype=torch.float64) / max(flat.numel(), 1))
        total += float((flat * weights).sum())
    return [hashlib.sha256(keys.encode()).hexdigest()[:16], total, after]


def test_cases_cover_every_registered_model():
    assert {model for _, model, _ in CASES} == set(model_names())
    assert len({name for name, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize("case,model,params", CASES, ids=[c[0] for c in CASES])
def test_initial_weights_and_keys_unchanged(case, model, params):
    digest, total, after = fingerprint(model, params)
    expected = EXPECTED[case]
    assert digest == expected[0], f"{case}: state-dict keys, shapes or dtypes changed"
    assert total == pytest.approx(expected[1], rel=1e-7, abs=1e-6), f"{case}: initial weights changed"
    assert after == pytest.approx(expected[2], rel=1e-12), f"{case}: the build draws a different count of numbers"


if __name__ == "__main__":  # print the fingerprints of the current code (the content of EXPECTED_FILE)
    json.dump({case: fingerprint(model, params) for case, model, params in CASES}, sys.stdout, indent=1)
    sys.stdout.write("\n")
