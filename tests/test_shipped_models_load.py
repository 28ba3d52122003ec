"""Shipped models load without ensai_tf's own loader, and ``ensai export`` serves them exactly.

* ``import ensai_tf`` is enough for plain ``keras.saving.load_model`` on every
  shipped ``.keras`` file, and the model gives ``ensai predict``'s numbers on
  the same prepared image (float32 throughout; tolerance 1e-5 arcsec).
* ``ensai export trained_weights/combined OUT`` writes a SavedModel that a
  process which never imports ensai_tf loads with ``tf.saved_model.load``,
  and whose ``serve`` endpoint reproduces ``ensai predict`` to 1e-5.
"""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ensai_tf import cli, conventions, model_dir
from ensai_tf.preprocess import images as prep
from ensai_tf.screen import SCREEN_FOLDER, load_screen

SHIPPED = model_dir.shipped_weights_dir()
TWO_BAND = "alexnet_two_band"
"""The shipped network that reads two bands (tested on its own below)."""
NETWORKS = sorted(p.parent.name for p in SHIPPED.glob(f"*/{model_dir.MODEL_KERAS}")
                  if p.parent.name not in (SCREEN_FOLDER, TWO_BAND))
"""The shipped one-band lens-measuring networks (the screening network measures no lens)."""
TOL = 1e-5
"""Absolute tolerance, arcsec or dimensionless: float32 rounding of one forward pass."""

pytestmark = pytest.mark.skipif(not NETWORKS, reason="no shipped weights in this checkout")


def _ring(path):
    """An Einstein-ring-like test image, 0.04 arcsec pixels, saved as .npy."""
    y, x = (np.mgrid[:conventions.NPIX, :conventions.NPIX] - 95.5) * conventions.PIXEL_SCALE
    r = np.hypot((x - 0.1) / 0.9, (y + 0.05) / 1.1)
    np.save(path, np.exp(-0.5 * ((r - 1.2) / 0.08) ** 2) * (1 + 0.3 * np.cos(np.arctan2(y, x))))
    return path


def _predict_csv(capsys, model, image, out, *extra):
    assert cli.main(["predict", str(model), str(image), "--output", str(out), *extra]) == 0
    capsys.readouterr()
    with open(out, newline="") as f:
        row = next(csv.DictReader(f))
    return np.array([float(row[n]) for n in conventions.PARAM_NAMES])


def _run(code):
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_plain_keras_loads_every_shipped_network(tmp_path, capsys):
    image = _ring(tmp_path / "ring.npy")
    prepared = prep.prepare_images(image)[0].image[None]
    np.save(tmp_path / "prepared.npy", prepared)
    got = _run(f"""
import json, numpy as np
import ensai_tf, keras
x = np.load({str(tmp_path / 'prepared.npy')!r})
out = {{}}
for name in {NETWORKS!r}:
    model = keras.models.load_model({str(SHIPPED)!r} + "/" + name + "/model.keras")
    out[name] = np.asarray(model(x, training=False), dtype=np.float64)[0, :5].tolist()
print(json.dumps(out))
""")
    for name in NETWORKS:
        want = _predict_csv(capsys, SHIPPED / name, image, tmp_path / f"{name}.csv")
        np.testing.assert_allclose(got[name], want, atol=TOL, rtol=0, err_msg=name)


def test_plain_keras_loads_the_two_band_network():
    """The two-band network (docs/design.md §5.10) reads (blue, red) channels; plain Keras
    loads it in safe mode and it gives finite parameters."""
    got = _run(f"""
import json, numpy as np
import ensai_tf, keras
model = keras.models.load_model({str(SHIPPED / TWO_BAND / "model.keras")!r})
x = np.random.default_rng(0).normal(0.0, 0.05, (2, 192, 192, 2)).astype(np.float32)
out = np.asarray(model(x, training=False), dtype=np.float64)
print(json.dumps({{"shape": list(model.input_shape[1:]), "finite": bool(np.isfinite(out).all()),
                  "outputs": out.shape[1]}}))
""")
    assert got == {"shape": [192, 192, 2], "finite": True, "outputs": 5}


def test_plain_keras_loads_the_screening_network(tmp_path):
    if not (SHIPPED / SCREEN_FOLDER).is_dir():
        pytest.skip("no shipped screening network")
    prepared = prep.prepare_images(_ring(tmp_path / "ring.npy"))[0].image[None]
    np.save(tmp_path / "prepared.npy", prepared)
    got = _run(f"""
import json, numpy as np
import keras
model = keras.models.load_model({str(SHIPPED / SCREEN_FOLDER / model_dir.MODEL_KERAS)!r},
                                safe_mode=True)
print(json.dumps(np.asarray(model(np.load({str(tmp_path / 'prepared.npy')!r}))).tolist()))
""")
    want = np.asarray(load_screen().model(prepared))
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("export_format", [
    # the shipped network's SavedModel takes a minute to trace; tests/test_export.py
    # exports a small two-view combination the same way in the default suite
    pytest.param("savedmodel", marks=pytest.mark.slow), "keras"])
def test_export_of_the_combined_network_reproduces_predict(tmp_path, capsys, export_format):
    combined = SHIPPED / "combined"
    if not combined.is_dir():
        pytest.skip("no shipped combined network")
    out = tmp_path / "export"
    assert cli.main(["export", str(combined), str(out), "--format", export_format]) == 0
    image = _ring(tmp_path / "ring.npy")
    want = _predict_csv(capsys, combined, image, tmp_path / "want.csv")
    np.save(tmp_path / "prepared.npy", prep.prepare_images(image)[0].image[None])
    if export_format == "savedmodel":
        got = _run(f"""
import json, sys, numpy as np, tensorflow as tf
loaded = tf.saved_model.load({str(out)!r})  # kept: it owns the variables
y = loaded.serve(tf.constant(np.load({str(tmp_path / 'prepared.npy')!r})))
assert not any(m.startswith("ensai_tf") for m in sys.modules)
print(json.dumps([float(y[n][0]) for n in {list(conventions.PARAM_NAMES)!r}]))
""")
        np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
    # ensai predict on the export itself gives the same numbers too
    again = _predict_csv(capsys, out, image, tmp_path / "again.csv")
    np.testing.assert_allclose(again, want, atol=TOL, rtol=0)


def test_export_refuses_an_existing_folder_it_did_not_write(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    for extra in ([], ["--overwrite"]):
        assert cli.main(["export", str(SHIPPED / NETWORKS[0]), str(out), *extra]) == 2
        assert str(out) in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_import_ensai_tf_registers_every_custom_keras_object():
    package = model_dir.shipped_weights_dir().parent / "ensai_tf"
    registering = sorted(
        ".".join(p.relative_to(package.parent).with_suffix("").parts)
        for p in package.rglob("*.py") if "@keras.saving.register_keras_serializable" in p.read_text())
    assert registering, "no module registers a custom object"
    loaded = _run("import json, sys, ensai_tf; print(json.dumps(sorted(sys.modules)))")
    assert [m for m in registering if m not in loaded] == []
