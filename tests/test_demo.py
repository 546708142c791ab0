"""``recsys demo``: the default model beside its baseline, untrained heads left out of the table."""

from recsys.demo import DEMO_MODELS, run_demo


def test_quick_demo_trains_cbmr_beside_wide_deep_and_hides_untrained_heads(tmp_path, capsys):
    results = run_demo(data_dir=str(tmp_path / "world"), run_root=str(tmp_path / "runs"), quick=True)
    labels = [label for label, _, _ in DEMO_MODELS]
    assert list(results) == labels and labels[0].startswith("cbmr")
    for label in ("cbmr (ctr)", "wide_deep (ctr)"):
        assert 0.5 < results[label]["ctr/auc"] < 1.0
        assert not any(k.startswith(("stay/", "cvr/")) for k in results[label]), label
    assert {"ctr/auc", "stay/auc", "cvr/auc"} <= set(results["wide_deep (all tasks)"])

    table = capsys.readouterr().out
    header = next(line for line in table.splitlines() if line.startswith("| task"))
    assert header == "| task | slice | oracle | " + " | ".join(labels) + " |"
    cvr = next(line for line in table.splitlines() if line.startswith("| cvr | all |"))
    cells = [c.strip() for c in cvr.strip("|").split("|")]
    oracle, cbmr, wd_ctr, wd_all = cells[2:]
    assert float(oracle) > 0.5 and cbmr == "" and wd_ctr == "" and float(wd_all) > 0
    ctr = next(line for line in table.splitlines() if line.startswith("| ctr | scenario=feed |"))
    assert all(c.strip() for c in ctr.strip("|").split("|"))
