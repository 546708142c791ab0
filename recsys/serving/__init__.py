"""Serving: a trained run as an unsharded model, a plain-tensor program and a self-contained artifact.

* :func:`load_for_inference` (``recsys.serving.loading``): the run's model, unsharded, eval mode, weights from a
  checkpoint saved by any number of ranks.
* :class:`ServingModule` (``recsys.serving.module``): ``(dense, values, lengths, scenario) -> {task: [B]}``
  (probabilities for binary tasks) for every registered model; no ``Batch``, no labels.
* :func:`export_run` (``recsys.serving.export``, ``recsys export``): TorchScript (or AOTInductor) program,
  encoders, standalone runtime and manifest in one folder (docs/serving.md).
* ``recsys/serving/runtime.py``: the artifact's standalone runtime (copied into every artifact), importable
  without recsys.

Example::

    from recsys.serving import ServingModule, load_for_inference
    module = ServingModule(load_for_inference("runs/wide_deep_synthetic"))
    scores = module(dense, values, lengths, scenario)
"""

from typing import Any

__all__ = ["ServingModule", "export_run", "load_for_inference", "open_run"]


def __getattr__(name: str) -> Any:  # lazily: importing recsys.serving.runtime needs no torch
    if name in ("load_for_inference", "open_run"):
        from recsys.serving import loading

        return getattr(loading, name)
    if name == "ServingModule":
        from recsys.serving.module import ServingModule

        return ServingModule
    if name == "export_run":
        from recsys.serving.export import export_run

        return export_run
    raise AttributeError(f"module 'recsys.serving' has no attribute {name!r}")
