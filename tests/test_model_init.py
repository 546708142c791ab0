"""Every model's initial weights and state-dict keys are fixed: the same seed builds the same model.

Quality figures (docs/benchmarks.md) are reproduced from ``torch.manual_seed(seed)`` before ``build_model``, and
checkpoints of earlier runs are loaded by state-dict key. So a refactoring of the model code must keep, for every
model and option set, (1) the key names, shapes and dtypes of the state dict, (2) the order in which parameters
draw their initial values from the RNG and (3) how many numbers the build draws. The expected fingerprints below
were computed from the code before the models were recomposed from shared blocks; a change of them is a change
of behaviour and must be deliberate (recompute with ``python tests/test_model_init.py``).

The schema mirrors the synthetic live-streaming world (configs/datasets/synthetic.yaml) with small tables; the
cases are every registered model with its defaults, every model of the benchmark grids and shipped configs, and
variants reaching the other construction branches (activations with parameters, dropout shifting layer indices,
optional parts switched off).
"""

import hashlib
import json
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

# name -> [digest of the state-dict keys, shapes and dtypes; weighted sum of the initial values; next random]
EXPECTED: Dict[str, List[Any]] = {
    "calibration4cvr/defaults": ["159f5762f168e259", 358.8478916091546, 0.375795841217041],
    "cbmr/defaults": ["0ce1303cc75f2f7c", -1684.3474376819272, 0.07995027303695679],
    "dcn/defaults": ["0005fc193fee6436", 197.60962780118837, 0.7209955453872681],
    "dcn_mts/defaults": ["4fca4c08f9ad536f", 578.3655197674218, 0.631477415561676],
    "deepfm/defaults": ["a069b35d31c5a3b1", -78.13962967037128, 0.11210626363754272],
    "deepfm_mts/defaults": ["b5064c531b0ae7a1", 1102.9396319236396, 0.16025781631469727],
    "dffm/defaults": ["8550ebc7d24c8b93", 293.1021347313213, 0.2858274579048157],
    "dnn/defaults": ["2aa115d602faab5e", -24.17660798874215, 0.5966153740882874],
    "dnn_mts/defaults": ["00a7ee85affe1d91", 587.8059720550759, 0.249886155128479],
    "esmm/defaults": ["7ed0a595c2714870", 638.7484401451926, 0.10280925035476685],
    "hmoe/defaults": ["7d362549c028f745", 1167.2326422858496, 0.5897674560546875],
    "mmoe/defaults": ["c0fa51cebf941958", 436.76652169484817, 0.15381473302841187],
    "multicbmr/defaults": ["3321d371ce89a1f3", 2728.5395865615246, 0.7316885590553284],
    "pepnet/defaults": ["e1f5b6f84c5cccdb", 1776.715526254865, 0.8127583861351013],
    "ple/defaults": ["4bb9bea7839206ca", 3447.938397356811, 0.93146151304245],
    "shared_bottom/defaults": ["4ed1d4406a648f41", 171.86002135746182, 0.3281116485595703],
    "single_task/defaults": ["b9d5a25e0d2c534b", -363.1880617772066, 0.1574561595916748],
    "ssim/defaults": ["167968d958b54abb", 587.8059720550759, 0.249886155128479],
    "ssim_search/defaults": ["17adb9c444d443f4", 635.336515574053, 0.4362325668334961],
    "stan/defaults": ["53a329ba4c158a03", 24100.897167357067, 0.39728277921676636],
    "star/defaults": ["796cf0abae30b043", 18030729.133162703, 0.9082358479499817],
    "wide_deep/defaults": ["c23551128527d23d", -37.294056907071806, 0.11210626363754272],
    "calibration4cvr/ctr_mlp": ["b0478c8d4b259d36", -256.70551445312344, 0.2062009572982788],
    "calibration4cvr/ctr_scaled": ["7371651dcbcdd18c", 101.68838070708853, 0.5605663657188416],
    "calibration4cvr/cvr_se": ["159f5762f168e259", 358.8478916091546, 0.375795841217041],
    "calibration4cvr/cvr_se_concat": ["2724021ef189558a", 648.3424693431534, 0.42422646284103394],
    "cbmr/grid": ["0ce1303cc75f2f7c", -1684.3474376819272, 0.07995027303695679],
    "cbmr/dropout": ["0ce1303cc75f2f7c", -1684.3474376819272, 0.07995027303695679],
    "cbmr/senet": ["21061aa84c9b4669", 1867.6006094017039, 0.8146032691001892],
    "cbmr/mlpcb_only": ["17bb68bda2d94461", 810.2468770520024, 0.5188015699386597],
    "cbmr/k2": ["04037348fe9b26dc", 865.5737512267907, 0.6429383754730225],
    "cbmr/relu": ["0ce1303cc75f2f7c", -485.8474376819271, 0.07995027303695679],
    "cbmr/embcb_only": ["ca5852efc35b6028", -290.8826448784059, 0.6481058597564697],
    "cbmr/parallel": ["25af7360b6dd2f62", -955.821765026268, 0.7461579442024231],
    "dcn/grid": ["0005fc193fee6436", 197.60962780118837, 0.7209955453872681],
    "dcn_mts/grid": ["4fca4c08f9ad536f", 578.3655197674218, 0.631477415561676],
    "deepfm/grid": ["a069b35d31c5a3b1", -78.13962967037128, 0.11210626363754272],
    "deepfm_mts/grid": ["b5064c531b0ae7a1", 1102.9396319236396, 0.16025781631469727],
    "dffm/grid": ["8550ebc7d24c8b93", 293.1021347313213, 0.2858274579048157],
    "dnn/grid": ["2aa115d602faab5e", -24.17660798874215, 0.5966153740882874],
    "dnn_mts/grid": ["00a7ee85affe1d91", 587.8059720550759, 0.249886155128479],
    "esmm/grid": ["7ed0a595c2714870", 638.7484401451926, 0.10280925035476685],
    "hmoe/grid": ["7d362549c028f745", 1167.2326422858496, 0.5897674560546875],
    "mmoe/grid": ["c0fa51cebf941958", 436.76652169484817, 0.15381473302841187],
    "multicbmr/uncalibrated": ["8df5f52d48c47673", 640.1254629149981, 0.3885490298271179],
    "multicbmr/config": ["3321d371ce89a1f3", 2728.5395865615246, 0.7316885590553284],
    "pepnet/grid": ["e1f5b6f84c5cccdb", 1776.715526254865, 0.8127583861351013],
    "ple/grid": ["4bb9bea7839206ca", 3447.938397356811, 0.93146151304245],
    "shared_bottom/grid": ["4ed1d4406a648f41", 171.86002135746182, 0.3281116485595703],
    "single_task/grid": ["b9d5a25e0d2c534b", -363.1880617772066, 0.1574561595916748],
    "ssim/dcn_mts": ["001d6cd810410eaa", 578.3655197674218, 0.631477415561676],
    "ssim/deepfm_mts": ["be58820b122b5b0b", 1102.9396319236396, 0.16025781631469727],
    "ssim/dnn_mts": ["167968d958b54abb", 587.8059720550759, 0.249886155128479],
    "ssim/hmoe": ["2184e8b707eb3e71", 1167.2326422858496, 0.5897674560546875],
    "ssim/star": ["7b276b032416dac5", 18030729.133162703, 0.9082358479499817],
    "ssim_search/config": ["17adb9c444d443f4", 635.336515574053, 0.4362325668334961],
    "stan/beta": ["53a329ba4c158a03", 24100.897167357067, 0.39728277921676636],
    "stan/none": ["c2ebacf257b9c110", 1484.0510633480321, 0.39728277921676636],
    "stan/prediction": ["c2ebacf257b9c110", 1484.0510633480321, 0.39728277921676636],
    "stan/no_branch": ["0d7c7654d556b69c", 1850.8081035492473, 0.7164982557296753],
    "stan/config": ["53a329ba4c158a03", 24100.897167357067, 0.39728277921676636],
    "star/grid": ["796cf0abae30b043", 18030729.133162703, 0.9082358479499817],
    "wide_deep/grid": ["c23551128527d23d", -37.294056907071806, 0.11210626363754272],
    "wide_deep/dropout": ["c23551128527d23d", -37.294056907071806, 0.11210626363754272],
    "wide_deep/movielens": ["7ddad6e99a6994f6", 529.5574897512231, 0.6649481654167175],
    "wide_deep/billion": ["9709c0ab6de25567", 328.37353164190336, 0.5865796208381653],
    "calibration4cvr/prelu_scaled": ["f0b588cede488693", 577.5934682504984, 0.6573095321655273],
    "calibration4cvr/prelu_se": ["975dc9a6b964159c", 163.3532945287102, 0.7257372140884399],
    "calibration4cvr/no_pos": ["fee06830ca3f7037", 970.7997720044845, 0.5653232336044312],
    "cbmr/prelu_batch": ["122a6aa18192332e", 6268.926081813611, 0.1986018419265747],
    "dcn/v2": ["63dc3accc71f9bba", 360.220682994508, 0.08136934041976929],
    "dcn/v2_low_rank": ["2af7b1502761220d", -27.259216754751233, 0.6354199051856995],
    "dcn_mts/v2_prelu": ["3b871f7984e3ba07", 732.6257896585989, 0.9462472200393677],
    "deepfm/batch": ["b0535cace664310e", 5991.960981499295, 0.8130016922950745],
    "deepfm_mts/prelu": ["6ebdc4525dd86b02", 1757.7273361530943, 0.29341208934783936],
    "dffm/variant": ["7d2e23bb286f2db1", 19792.21337424413, 0.17228639125823975],
    "dnn/prelu_layer": ["6e391231db6261c8", 1445.332984229997, 0.9119057059288025],
    "dnn/no_dense": ["38fed0e8d9849285", 0.4638983791228384, 0.061957478523254395],
    "dnn_mts/prelu_dropout": ["c0865845d9da16ed", 2175.0943759332554, 0.4912532567977905],
    "dnn_mts/no_tower": ["462452ab34b741f7", -87.18536311001695, 0.8872712850570679],
    "esmm/variant": ["b0546d3e808879fc", -79.26173883782353, 0.2609345316886902],
    "hmoe/prelu": ["d84860076fc2e139", 407.58385120545125, 0.24406832456588745],
    "mmoe/prelu": ["7cec13a86efe99b2", -234.62195016205396, 0.666782021522522],
    "mmoe/linear_towers": ["44384db4c44f6653", 211.05716611674794, 0.462393581867218],
    "multicbmr/expert_specific": ["367f9b45d20b8719", 5845.277337529011, 0.8293482065200806],
    "multicbmr/no_wide": ["63004e6e53b9a4bb", 4072.3110543258417, 0.7543519735336304],
    "pepnet/field_dim": ["370e4138325f9d27", 165.58482160794026, 0.8196347951889038],
    "pepnet/no_epnet": ["85f1406cd2d4002c", 286.6095368278942, 0.916326642036438],
    "pepnet/no_ppnet": ["93d080b6e16784cd", -84.40361274292133, 0.6177793741226196],
    "ple/prelu": ["255a05b67b31fdb9", 726.8717617270588, 0.3442530632019043],
    "shared_bottom/prelu": ["c40a69d68e8b94d1", -83.62710620162761, 0.2142515778541565],
    "single_task/variant": ["b9be65cc5d836b9e", 403.245088495734, 0.1642342209815979],
    "single_task/no_bias": ["2adf6bbfb5a4a939", 143.65658922159398, 0.48610931634902954],
    "ssim_search/star": ["38c5f42a19725502", 729160.3052817003, 0.004477381706237793],
    "stan/mmoe": ["33de2d2c4312d30f", 23976.721341744982, 0.9460910558700562],
    "stan/mmoe_no_branch": ["2dcb7278848d77aa", 1450.4666466825124, 0.48552197217941284],
    "stan/levels": ["6d083767445ebd13", 31066.285977497235, 0.36870068311691284],
    "star/prelu": ["bee55e530883744a", 749006.5995807635, 0.3345707654953003],
    "wide_deep/prelu": ["12e1b67ffdc11811", 1596.237868289205, 0.3945157527923584],
}


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


if __name__ == "__main__":  # print EXPECTED from the current code
    sys.stdout.write("EXPECTED: Dict[str, List[Any]] = {\n")
    for case, model, params in CASES:
        sys.stdout.write(f"    {json.dumps(case)}: {json.dumps(fingerprint(model, params))},\n")
    sys.stdout.write("}\n")
