"""Workflows of one model family that span several runs (SSIM's search -> export -> retrain).

They drive :class:`~recsys.train.trainer.Trainer` through its public API only (``fit``, ``scan``,
``evaluate``); the trainer itself knows no model class.
"""
