"""The weights shipped in ``trained_weights/``.

Every shipped model loads and gives finite ``(B, 5)`` predictions; each one
reproduces the check metrics stored in its ``metrics.json`` (written by
``tools/ship_weights.py`` on the first lenses of the fixed test set); each
beats the trivial prior-mean predictor by a wide margin; ``ensai demo`` runs
end to end. The Gaussian-head networks also reproduce their stored interval
coverage, and the calibrated coverage of each on its full test set (with
shear for the shear network) is within 2 percentage points of nominal.
"""

import json
import os

import numpy as np
import pytest

from ensai_tf import (cli, config, evaluate, inference, metrics, model_dir, reports, symmetry,
                      uncertainty)
from ensai_tf.conventions import PARAM_NAMES

WEIGHTS = model_dir.shipped_weights_dir()
SHIPPED = ("alexnet", "ensai_net", "overfeat", "inception_v4", "combined", "alexnet_shear",
           "alexnet_gaussian")
UNCERTAINTY = ("alexnet_shear", "alexnet_gaussian")  # Gaussian heads, with calibration.json

# Relative tolerance of the reproduced 68% errors: the same weights on the
# same (stateless-seeded) lenses, predicted in float32 (loading.float32_model),
# so only float rounding differs between CPUs. tools/float32_stability.py
# (200 check lenses, oneDNN on with batch 50 against off with batch
# 7): predictions moved by at most 6e-7 and the 68% errors by at most 2e-6
# relative. 0.5% is far above that and below what a change of the weights or
# of the inference precision does (bfloat16 inference moved them by up to 4%).
CHECK_RTOL = 0.005

# "By a wide margin": at most this fraction of the prior-mean predictor's 68% error.
TRIVIAL_MARGIN = 0.75


def _metrics(name):
    return json.loads((WEIGHTS / name / "metrics.json").read_text())


@pytest.fixture(scope="module")
def check_set():
    n = max(_metrics(name)["check"]["n"] for name in SHIPPED)
    images, params, _ = evaluate.collect_test_set(config.get_preset("paper"), n)
    return images, params


@pytest.fixture(scope="module")
def predictor():
    """``predictor(name, raw=False)``: ``inference.load_predictor`` of a shipped network,
    loaded once per module (loading and tracing the combined network takes longer than
    predicting the check lenses)."""
    loaded = {}

    def get(name, raw=False):
        if (name, raw) not in loaded:
            loaded[name, raw] = inference.load_predictor(WEIGHTS / name, raw=raw)
        return loaded[name, raw]

    return get


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_loads_and_predicts_finite_values(name, check_set, predictor):
    predict_fn, npix = predictor(name)
    assert npix == 192
    pred = inference.predict_images(predict_fn, check_set[0][:7], 4)
    assert pred.shape == (7, 5) and np.all(np.isfinite(pred))


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_metrics_are_reproduced_on_the_check_subset(name, check_set, predictor):
    stored = _metrics(name)["check"]
    n = stored["n"]
    predict_fn, _ = predictor(name)
    pred = inference.predict_images(predict_fn, check_set[0][:n], 50)
    got = metrics.error_table(check_set[1][:n], pred)
    for p in PARAM_NAMES:
        np.testing.assert_allclose(got[p]["error68"], stored["metrics"][p]["error68"],
                                   rtol=CHECK_RTOL, err_msg=f"{name} {p}")


_PAIRS = [(n, p) for n in SHIPPED for p in PARAM_NAMES]


@pytest.fixture(scope="module")
def prior_mean_errors(check_set):
    images, true = check_set
    # the prior mean: theta_E at the middle of its range, no ellipticity, centred lens
    trivial = np.zeros_like(true)
    trivial[:, 0] = np.mean(config.get_preset("paper").lens.theta_e)
    return {n: metrics.error_table(true[:n], trivial[:n])
            for n in {_metrics(name)["check"]["n"] for name in SHIPPED}}


@pytest.mark.parametrize("name, param", _PAIRS)
def test_shipped_model_beats_the_prior_mean_predictor(name, param, prior_mean_errors):
    """On the same check lenses, at most TRIVIAL_MARGIN of the prior mean's 68% error."""
    check = _metrics(name)["check"]
    base = prior_mean_errors[check["n"]][param]["error68"]
    assert check["metrics"][param]["error68"] < TRIVIAL_MARGIN * base


def test_shipped_metrics_are_on_the_full_test_set():
    for name in SHIPPED:
        data = _metrics(name)
        assert data["n"] == config.get_preset("paper").data.test_size, name
        assert data["experiment"] is None


@pytest.mark.parametrize("name", ("alexnet", "ensai_net", "overfeat", "inception_v4",
                                  "alexnet_shear", "alexnet_gaussian", "alexnet_lens_light",
                                  "alexnet_two_band"))
def test_shipped_training_log_covers_every_stage(name):
    """log.csv: stages 1, 2, ... in order, each with epochs 0, 1, ... and finite losses."""
    import csv

    with open(WEIGHTS / name / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    stages = [int(r["stage"]) for r in rows]
    assert stages[0] == 1 and all(b - a in (0, 1) for a, b in zip(stages, stages[1:])), name
    for stage in set(stages):
        epochs = [int(r["epoch"]) for r in rows if int(r["stage"]) == stage]
        assert epochs == list(range(len(epochs))), (name, stage)
    assert all(np.isfinite(float(r["val_loss"])) for r in rows), name


def test_shipped_combined_refers_to_the_shipped_networks():
    """combined/ holds no copy of its backbones: its combiner.json names the shipped model.keras
    of the four paper networks and the two Gaussian-head AlexNets, unchanged since it was
    trained (SHA-256), alexnet_gaussian a second time as the twin on the views that swap the axes
    (train.split_view_backbones), and their 7 x 5 combination weights."""
    folder = WEIGHTS / "combined"
    assert model_dir.model_source(folder)[0] == "combined"
    record = json.loads((folder / "combiner.json").read_text())
    names = ("overfeat", "ensai_net", "alexnet", "inception_v4", "alexnet_shear",
             "alexnet_gaussian", "alexnet_gaussian")
    as_lists = [[[bool(v) for v in g] for g in views] for views in
                (symmetry.AXIS_VIEWS, symmetry.SWAPPED_AXIS_VIEWS)]
    assert record["views"][-2:] == as_lists
    assert [(folder / p).resolve() for p in record["backbones"]] == [
        (WEIGHTS / n / "model.keras").resolve() for n in names]
    assert [model_dir.file_sha256(folder / p) for p in record["backbones"]] == \
        record["backbone_sha256"]
    assert record["mode"] == "per_parameter" and record["reference"] == 0
    assert np.asarray(record["weights"][0]).shape == (len(names), len(PARAM_NAMES))


def test_combined_beats_every_network_on_theta_e():
    """The accuracy targets, on the full test set of each shipped metrics.json."""
    combined = _metrics("combined")["metrics"]["theta_e"]["error68"]
    for name in SHIPPED:
        if name != "combined":
            assert combined < _metrics(name)["metrics"]["theta_e"]["error68"], name


def test_ensai_demo_runs_end_to_end(tmp_path, capsys):
    assert cli.main(["demo", "--n", "20", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "using combined" in out and "ms per lens" in out
    for f in ("table1.md", "metrics.json", "figure1.png"):
        assert (tmp_path / "demo" / f).is_file()


@pytest.mark.parametrize("name, outputs", (("alexnet_shear", 7), ("alexnet_gaussian", 5)))
def test_gaussian_networks_have_a_diagonal_head_and_a_calibration(name, outputs, check_set,
                                                                   predictor):
    raw_fn, _ = predictor(name, raw=True)
    raw = inference.predict_images(raw_fn, check_set[0][:3], 3)
    assert uncertainty.head_layout(raw.shape[1]) == ("diagonal", outputs)
    assert np.all(np.isfinite(uncertainty.gaussian_summary(raw)["std"]))
    cal = inference.load_calibration(WEIGHTS / name)
    assert cal is not None and "validation" in cal["fitted_on"]


@pytest.mark.parametrize("name", UNCERTAINTY)
def test_gaussian_networks_reproduce_their_stored_coverage(name, check_set, predictor):
    """Same weights and lenses: each coverage fraction within 2 lenses of the stored one."""
    stored = _metrics(name)["check"]
    n = stored["n"]
    raw_fn, _ = predictor(name, raw=True)
    summary = uncertainty.gaussian_summary(inference.predict_images(raw_fn, check_set[0][:n], 50))
    cal = inference.load_calibration(WEIGHTS / name)
    cal5 = dict(cal, multipliers=np.asarray(cal["multipliers"])[:, :5].tolist())
    got = reports.coverage_report(check_set[1][:n], summary["mean"][:, :5],
                                  summary["std"][:, :5], cal5)
    for kind in ("raw", "calibrated"):
        for level, row in stored["coverage"][kind].items():
            for p in PARAM_NAMES:
                assert abs(got[kind][level][p] - row[p]) <= 2 / n + 1e-9, (kind, level, p)


@pytest.mark.parametrize("name, report, experiment", (
    ("alexnet_shear", "metrics_shear.json", "shear"),
    ("alexnet_gaussian", "metrics.json", None)))
def test_gaussian_networks_calibrated_coverage_is_nominal_on_their_test_set(name, report,
                                                                          experiment):
    """Each Gaussian-head network on the 10,000 test lenses simulated like its training data
    (with shear for the shear network, as ensai evaluate --experiment shear measures it): the
    validation-fitted calibration puts 68% and 95% of the truths inside, within 2 percentage
    points."""
    data = json.loads((WEIGHTS / name / report).read_text())
    assert data["n"] == 10000 and data["experiment"] == experiment
    for level, row in data["coverage"]["calibrated"].items():
        for param, fraction in row.items():
            assert abs(fraction - float(level)) <= 0.02, (level, param, fraction)


def test_the_training_script_runs_every_stage_of_the_stage_table(tmp_path):
    """tools/train_shipped_weights.sh (dry run) trains each network's stages as
    trained_weights/README.md's stage table records them: the same stages, first learning
    rate, wall-clock budget and training arcs (count, pregenerate_arcs seed, shear), as many
    stages as each shipped log.csv holds, and the shipped combiner's views."""
    import csv
    import re
    import subprocess

    root = WEIGHTS.parent
    table = (WEIGHTS / "README.md").read_text().split("| network | stage | lr |")[1]
    rows = {}
    for line in table.split("\n\n")[0].splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == "`combined`":
            continue
        rows[(cells[0].strip("`"), int(cells[1]))] = (float(cells[2].split()[0]), float(cells[5]),
                                                     cells[7])
    out = subprocess.run(["bash", str(root / "tools/train_shipped_weights.sh"), str(tmp_path)],
                         env={**os.environ, "DRY_RUN": "1"}, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, check=True, timeout=60).stdout
    pools = {m[1]: (int(m[2]), int(m[3]), "lens.shear=true" in m[4]) for m in re.finditer(
        r"\+ pregenerate_arcs \S+/arcs/(\S+) (\d+) (\d+)(.*)", out)}
    stages = {(m[1], int(m[2])): (float(m[3]), float(m[4]), pools[m[5]]) for m in re.finditer(
        r"== (\w+), stage (\d+): lr (\S+), (\d+) min, arcs (\S+)", out)}
    assert set(stages) == set(rows)
    for key, (lr, minutes, arcs) in rows.items():
        got_lr, got_minutes, (count, seed, shear) = stages[key]
        assert (got_lr, got_minutes) == (lr, minutes), key
        assert shear == ("shear" in arcs), key
        if arcs[0].isdigit():
            assert count == int(arcs.split()[0].replace(",", "")), key
        if arcs.endswith(")"):
            assert seed == int(arcs.rsplit("(", 1)[1].rstrip(")")), key
    for name in {net for net, _ in rows}:
        with open(WEIGHTS / name / "log.csv", newline="") as f:
            logged = {int(r["stage"]) for r in csv.DictReader(f)}
        assert logged == {k for net, k in rows if net == name}, name
    # and the combiner with the views of the shipped one
    import yaml

    shipped = yaml.safe_load((WEIGHTS / "combined" / "config.yaml").read_text())["train"]
    combine = next(line for line in out.splitlines() if line.startswith("+ ensai combine"))
    assert f"train.combine_views={shipped['combine_views']} " in combine
    assert f"train.single_view_backbones=[{','.join(shipped['single_view_backbones'])}]" in combine
    assert f"train.split_view_backbones=[{','.join(shipped['split_view_backbones'])}]" in combine
    assert shipped["combine_loss"] == "logcosh"  # the cpu preset's, which the script uses
