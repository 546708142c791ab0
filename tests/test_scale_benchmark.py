"""benchmarks/scale.py measures what it says: a timed run's phases add up, its rates follow from samples and
seconds, and the vocabulary-lookup timing compares two lookups that give the same rows."""

import pytest

from benchmarks import scale


def test_cell_phases_and_rates_are_consistent(tiny_world, tmp_path):
    cell = scale.run_cell(tiny_world, "stream", str(tmp_path / "run"), batch_size=256, max_steps=5)
    s = cell["seconds"]
    assert cell["steps"] == 5 and cell["samples"] == 5 * 256
    assert s["fit"] > 0 and s["read"] == 0.0 and s["train"] > 0 and s["eval"] > 0  # streaming reads while training
    assert s["total"] >= s["fit"] + s["train"] + s["eval"]
    assert cell["loop_samples_per_sec"] == pytest.approx(cell["samples"] / s["train"])
    assert cell["end_to_end_samples_per_sec"] == pytest.approx(cell["samples"] / s["total"])
    assert 0.0 <= cell["loader_wait_share"] <= 1.0 and 0 < cell["end_to_end_ratio"] < 1
    assert cell["peak_rss_bytes"] > 100 * 2**20
    assert 100 * 2**20 < cell["peak_rss_before_eval_bytes"] <= cell["peak_rss_bytes"]


def test_history_state_is_bounded_by_users_and_buckets():
    small = scale.history_state(3_000, users=40, buckets=8, exact_up_to=10**6, chunk=500)
    large = scale.history_state(30_000, users=40, buckets=8, exact_up_to=10**6, chunk=500)
    assert small["exact"]["entries"] == 3_000 and large["exact"]["entries"] == 30_000
    assert small["bounded"]["entries"] <= 40 * 8 and large["bounded"]["entries"] <= 40 * 8
    assert large["bounded"]["bytes"] < large["exact"]["bytes"] / 10


def test_encoder_timing_and_report():
    enc = scale.encoder_chunk(20_000, chunk=5_000)  # asserts the two lookups give the same rows
    assert enc["vocab_ids"] == 20_000 and enc["prebuilt_seconds"] > 0 and enc["index_in_seconds"] > 0
    cell = {"mode": "stream", "steps": 10, "samples": 100, "loop_samples_per_sec": 50.0,
            "end_to_end_samples_per_sec": 40.0, "end_to_end_ratio": 0.8, "loader_wait_share": 0.01,
            "peak_rss_bytes": 2**30, "seconds": {"fit": 1, "read": 0, "train": 2, "eval": 1, "total": 2.5}}
    big = dict(cell, peak_rss_bytes=int(1.1 * 2**30))
    result = {"environment": {"cpu": "x", "cpu_count": 2, "threads": 2, "torch": "t", "fbgemm_gpu": "f",
                              "torchrec": "r", "python": "p", "date": "d", "command": "c"},
              "batch_size": 10, "ids": 1000, "encoder": enc,
              "sizes": [{"rows": 1000, "generate_seconds": 1.0, "max_steps": None, "cells": [cell]},
                        {"rows": 3000, "generate_seconds": 2.0, "max_steps": 10, "cells": [big]}]}
    result["goals"] = scale.goals(result)
    assert "streaming peak RSS 1.10 GiB at 3,000 rows vs 1.00 GiB at 1,000: 1.10x" in result["goals"][-1]
    md = scale.markdown(result)
    assert "| 3,000 (10 steps) | stream |" in md and "0.80x" in md and "1.0%" in md
