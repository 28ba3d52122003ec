"""The quick-start notebook runs top to bottom.

``examples/quick_demo.ipynb`` is executed with nbclient in a fresh kernel of
this interpreter, in a temporary working directory, and the test fails on the
first cell that raises (nbclient names the cell and shows its traceback).

The notebook runs on the shipped AlexNet (``trained_weights/alexnet``, the
fastest shipped network; the notebook's own default is the combined model)
on 40 test lenses (``ENSAI_DEMO_N``; the notebook's default is 100), which
cuts the test's time by about two thirds and exercises the same cells. ``ENSAI_WEIGHTS`` set by
the caller wins. Without shipped weights a tiny stand-in network (bias
removal, global average, a dense layer) is written to the temporary folder
and passed through ``ENSAI_WEIGHTS``, so that the notebook's code is
exercised on every checkout; its predictions are meaningless, which this test
does not look at.
"""

import json
import os
import pathlib
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "examples" / "quick_demo.ipynb"
CELL_TIMEOUT_S = 600  # per cell; the whole notebook takes a few minutes on a 2-core CPU
KERNEL_NAME = "ensai-tf-notebook-test"


def _load_notebook():
    nbformat = pytest.importorskip("nbformat", reason="nbformat is in the 'test' extra")
    return nbformat.read(NOTEBOOK, as_version=4)


def test_notebook_is_stored_without_outputs():
    nb = _load_notebook()
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert code_cells, "the notebook has no code cells"
    for i, cell in enumerate(code_cells):
        assert cell.outputs == [] and cell.execution_count is None, (
            f"code cell {i} of {NOTEBOOK.name} has stored outputs; clear them before committing "
            "(e.g. jupyter nbconvert --clear-output --inplace examples/quick_demo.ipynb)")


def _kernel_spec(folder):
    """A kernel spec that runs this interpreter, so the kernel sees this environment."""
    spec = folder / "kernels" / KERNEL_NAME
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "ensai_tf test kernel", "language": "python"}))
    return folder


def _stand_in_model(folder):
    """A tiny untrained network with the shipped models' interface, saved as model.keras."""
    import keras

    from ensai_tf.preprocess.bias import BiasRemoval

    inp = keras.Input((192, 192, 1))
    x = keras.layers.GlobalAveragePooling2D()(BiasRemoval()(inp))
    out = keras.layers.Dense(5, bias_initializer=keras.initializers.Constant(
        [1.2, 0.1, -0.1, 0.0, 0.0]))(x)
    folder.mkdir()
    keras.Model(inp, out).save(folder / "model.keras")
    return folder


def _weights_for_notebook(tmp_path):
    if os.environ.get("ENSAI_WEIGHTS"):
        return os.environ["ENSAI_WEIGHTS"]
    from ensai_tf.model_dir import find_weights
    from ensai_tf.errors import ModelDirError

    try:
        shipped, _ = find_weights()
        alexnet = shipped.parent / "alexnet"
        return str(alexnet) if alexnet.is_dir() else None  # None: the notebook's default
    except ModelDirError:
        return str(_stand_in_model(tmp_path / "stand_in_model"))


def test_quick_demo_notebook_runs(tmp_path, monkeypatch, record_property):
    nb = _load_notebook()
    nbclient = pytest.importorskip("nbclient", reason="nbclient is in the 'test' extra")
    pytest.importorskip("ipykernel", reason="ipykernel is in the 'test' extra")

    monkeypatch.setenv("JUPYTER_PATH", str(_kernel_spec(tmp_path / "jupyter")))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    monkeypatch.setenv("ENSAI_DEMO_N", os.environ.get("ENSAI_DEMO_N", "40"))
    weights = _weights_for_notebook(tmp_path)
    if weights is not None:
        monkeypatch.setenv("ENSAI_WEIGHTS", weights)
    workdir = tmp_path / "work"
    workdir.mkdir()

    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name=KERNEL_NAME,
                                     resources={"metadata": {"path": str(workdir)}})
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, naming the cell, on the first error
    elapsed = time.perf_counter() - start
    record_property("notebook_seconds", round(elapsed, 1))
    print(f"quick_demo.ipynb ran in {elapsed:.1f} s (weights: {weights or 'trained_weights/'})")

    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors, errors
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.outputs if o.output_type == "stream")
    assert "lenses analysed in" in text and "ms per lens" in text
    files = workdir / "quick_demo_files"
    for name in ("simulated_lenses.png", "test_lenses.png", "figure1.png", "lens_blue.fits",
                 "lens_red.fits", "masks.reg", "diagnostic.png", "lens.csv",
                 "lens_diagnostic.png"):
        assert (files / name).is_file(), f"the notebook did not write {name}"
    assert (files / "lens.csv").read_text().count("\n") == 2  # header and one lens
