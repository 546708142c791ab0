"""Baselines of the foundation: Wide&Deep and DNN on the synthetic world and MovieLens-100K."""

from benchmarks.quality import Experiment

TITLE = "Baselines: Wide&Deep and DNN"
EXPERIMENTS = [
    Experiment("Wide&Deep", "wide_deep", {"hidden": [256, 128, 64]}),
    Experiment("DNN", "dnn", {"hidden": [256, 128, 64]}),
]
METRICS = ["auc", "oracle_auc", "gauc", "logloss"]
