"""Reusable blocks with no I/O: sparse arch, MLPs, experts, calibration, scenario and interaction layers."""
