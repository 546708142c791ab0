"""The funnel data sets: Ali-CCP and AliExpress in their published CSV formats (tiny fixture files written
here), the funnel's evaluation, and that no label reaches a feature."""

import os

import numpy as np
import pandas as pd
import pytest

from recsys.config import SplitConfig, load_config
from recsys.data.dataset import Dataset
from recsys.data.spec import load_spec
from recsys.errors import ConfigError
from recsys.train.trainer import Trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPECS = os.path.join(REPO, "configs", "datasets")
ALICCP_SPARSE = ["101", "121", "122", "124", "125", "126", "127", "128", "129", "205", "206", "207", "210", "216",
                 "508", "509", "702", "853", "301", "109_14", "110_14", "127_14", "150_14"]
ALICCP_DENSE = ["D109_14", "D110_14", "D127_14", "D150_14", "D508", "D509", "D702", "D853"]


def funnel_labels(rng, n, ctr=0.3, cvr=0.3):
    click = (rng.random(n) < ctr).astype(int)
    return click, click * (rng.random(n) < cvr).astype(int)


def write_aliccp(root, n_train=900, n_test=300, seed=0):
    """torch-rechub's pre-processed Ali-CCP: click, purchase, sparse field ids, dense D* columns."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    for name, n in (("ali_ccp_train.csv", n_train), ("ali_ccp_val.csv", 50), ("ali_ccp_test.csv", n_test)):
        click, purchase = funnel_labels(rng, n)
        frame = {"click": click, "purchase": purchase}
        for c in ALICCP_SPARSE:
            frame[c] = rng.integers(0, 4 if c == "301" else 40, n)
        for c in ALICCP_DENSE:
            frame[c] = np.round(rng.random(n), 4)
        pd.DataFrame(frame).to_csv(os.path.join(root, name), index=False)


def write_aliexpress(root, countries=("NL", "US"), n=500, seed=0):
    """AliExpress_XX/{train,test}.csv: search_id, categorical_1..16, numerical_1..63, click, conversion."""
    rng = np.random.default_rng(seed)
    sizes = {}
    for k, country in enumerate(countries):
        folder = os.path.join(root, f"AliExpress_{country}")
        os.makedirs(folder, exist_ok=True)
        for split, rows in (("train", n + 100 * k), ("test", n // 3)):
            frame = {"search_id": rng.integers(0, 50, rows)}
            for i in range(1, 17):
                frame[f"categorical_{i}"] = rng.integers(0, 30, rows)
            for i in range(1, 64):
                frame[f"numerical_{i}"] = np.round(rng.random(rows), 5)
            frame["click"], frame["conversion"] = funnel_labels(rng, rows)
            pd.DataFrame(frame).to_csv(os.path.join(folder, f"{split}.csv"), index=False)
            sizes[(country, split)] = rows
    return sizes


def run_config(config, data, run_dir, model=None, params=None):
    overrides = [f"data.path={data}", f"run_dir={run_dir}", "data.batch_size=128", "train.epochs=1",
                 "train.max_steps=5", "train.progress=false", "tensorboard=false", "model.embedding_dim=8"]
    if model:
        overrides += [f"model.name={model}", f"model.params={params or '{}'}"]
    return load_config(os.path.join(REPO, "configs", config), overrides)


def test_aliccp_spec_reads_the_published_format(tmp_path):
    write_aliccp(str(tmp_path))
    ds = Dataset(load_spec(os.path.join(SPECS, "aliccp.yaml")), root=str(tmp_path),
                 split=SplitConfig(valid=0.1, test=0.0))
    ds.fit()
    schema = ds.schema()
    assert schema.feature_names == [f"f{c}" for c in ALICCP_SPARSE] and schema.dense_dim == len(ALICCP_DENSE)
    assert [(t.name, t.depends_on) for t in schema.tasks] == [("ctr", None), ("cvr", "ctr")]
    assert schema.num_scenarios == 4 and schema.scenario_feature == "f301" and schema.user_feature == "f101"
    parts = ds.read()
    test = pd.read_csv(tmp_path / "ali_ccp_test.csv")
    assert len(parts["test"]) == len(test)  # the separate test file is the test split
    assert len(parts["train"]) == 900 and len(parts["valid"]) == 50  # ali_ccp_val.csv is the validation split
    order = np.argsort(parts["test"].row_id)
    np.testing.assert_array_equal(parts["test"].labels["cvr"][order], test["purchase"])
    np.testing.assert_array_equal(parts["test"].scenario[order], test["301"])


@pytest.mark.parametrize("model, params", [("esmm", "{hidden: [16, 8]}"),
                                           ("calibration4cvr", "{bias_features: [f301], ctr_hidden: [16, 8], "
                                                               "cvr_hidden: [16, 8], calibrate_layer: 0}")])
def test_models_train_on_aliccp_and_report_the_funnel_metrics(tmp_path, model, params):
    write_aliccp(str(tmp_path / "data"))
    cfg = run_config("esmm_aliccp.yaml", tmp_path / "data", tmp_path / "run", model, params)
    result = Trainer(cfg).fit()
    test = pd.read_csv(tmp_path / "data" / "ali_ccp_test.csv")
    report = result["test"]
    assert report["rows"] == len(test)
    assert report["cvr/count"] == test["click"].sum()  # CVR AUC on clicked impressions
    assert report["ctr/count"] == len(test)  # CTR AUC on all
    for key in ("ctr/auc", "cvr/auc", "cvr/ctcvr_auc"):
        assert np.isfinite(report[key]), key
    assert "cvr/ctcvr_auc/scenario=s1" in report


def test_aliexpress_countries_come_from_folder_names_and_train(tmp_path):
    sizes = write_aliexpress(str(tmp_path / "data"))
    cfg = run_config("mmoe_aliexpress.yaml", tmp_path / "data", tmp_path / "run")
    trainer = Trainer(cfg)
    schema = trainer.schema
    assert schema.scenario_names == ("NL", "ES", "FR", "US") and schema.dense_dim == 63
    assert len(schema.sparse) == 17 and "search_id" not in schema.feature_names
    parts = trainer._data()
    test = parts["test"].scenario
    assert (test == 0).sum() == sizes[("NL", "test")] and (test == 3).sum() == sizes[("US", "test")]
    train = np.concatenate([parts["train"].scenario, parts["valid"].scenario])
    assert (train == 0).sum() == sizes[("NL", "train")] and (train == 3).sum() == sizes[("US", "train")]
    report = trainer.fit()["test"]
    assert np.isfinite(report["cvr/ctcvr_auc"]) and "ctr/auc/scenario=US" in report
    assert "ctr/auc/scenario=FR" not in report  # no FR rows in this fixture


def test_file_label_reports_a_path_that_does_not_match(tmp_path):
    write_aliexpress(str(tmp_path / "data"), countries=("NL",))
    os.rename(tmp_path / "data" / "AliExpress_NL", tmp_path / "data" / "AliExpress_nl")
    spec = load_spec(os.path.join(SPECS, "aliexpress.yaml"))
    with pytest.raises(Exception, match="does not match file_label pattern"):
        Dataset(spec, root=str(tmp_path / "data")).fit()


@pytest.mark.parametrize("spec", ["aliccp.yaml", "aliexpress.yaml", "synthetic.yaml"])
def test_no_label_or_oracle_column_is_a_feature(spec, tmp_path):
    s = load_spec(os.path.join(SPECS, spec))
    labels = {t.source_column for t in s.tasks} | set(s.oracle.values())
    features = {f.source_column for f in s.sparse} | {f.source_column for f in s.dense}
    assert labels and not labels & features
    Dataset(s, root=str(tmp_path))  # the dataset's own leak check passes
    s.dense.append(type(s.dense[0])(name="leak", column=s.tasks[-1].source_column))
    with pytest.raises(ConfigError, match="must not leak"):
        Dataset(s, root=str(tmp_path))
