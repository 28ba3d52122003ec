"""The README's worked real-data example runs as written.

``tools/make_two_band_example.py`` writes two FITS bands of a simulated lens
with a red lens galaxy; the ``ensai predict --bands`` command it prints is
run with the shipped combined network and must write the parameters (with
q and the position angle east of north) and the diagnostic figure.
"""

import importlib.util
import json
import pathlib

import numpy as np

from ensai_tf import cli

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _tool():
    spec = importlib.util.spec_from_file_location(
        "make_two_band_example", ROOT / "tools" / "make_two_band_example.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_two_band_example(tmp_path, capsys):
    tool = _tool()
    truth = tool.make_example(tmp_path / "example_lens")
    # the lens pixel follows the labels: field centre + (x_L, y_L) / 0.04 arcsec
    assert np.allclose(truth["lens_pixel"], [119.5 + truth["params"]["x_l"] / 0.04,
                                             119.5 + truth["params"]["y_l"] / 0.04])
    words = tool.predict_command(truth, model=str(ROOT / "trained_weights" / "combined"),
                                 output=str(tmp_path / "params.json"),
                                 plot=str(tmp_path / "diagnostic.png"))
    assert "--mask" in words
    assert cli.main(words) == 0
    captured = capsys.readouterr()
    # the default lens-light path: the fitted subtraction (docs/design.md §8.4)
    assert "--lens-light subtract: lens light fitted and subtracted" in captured.err
    (row,) = json.loads((tmp_path / "params.json").read_text())
    assert row["lens_light_path"] == "subtract"
    for key in ("theta_e", "e_x", "e_y", "x_l", "y_l", "q", "pa_deg", "ra_deg", "dec_deg"):
        assert np.isfinite(row[key]), key
    assert row["pa_frame"] == "east_of_north"
    assert (tmp_path / "diagnostic.png").stat().st_size > 10_000
    # refuses to overwrite the example files
    try:
        tool.make_example(tmp_path / "example_lens")
    except SystemExit as err:
        assert "already holds" in str(err)
    else:
        raise AssertionError("existing example files were overwritten")
