"""``ensai demo``: predict simulated test lenses with the shipped weights.

Uses the model :func:`ensai_tf.model_dir.find_weights` picks in
``trained_weights/`` (the folder next to the package in a source checkout):
the combined model when present, else the single network with the smallest
mean 68% error in its ``metrics.json``. It predicts the first ``n`` lenses of the fixed test set,
prints the error table and the time per lens, and writes Table 1 and
Figure 1 into ``out_dir`` (replacing the report of an earlier demo there), and
ends with one line: what it did, how long it took and where it wrote. Without
weights it raises ``ModelDirError`` saying how to train them.
"""

import time

from ensai_tf import config as config_lib
from ensai_tf import evaluate, model_dir, reports
from ensai_tf.callbacks import format_duration

__all__ = ["run_demo"]


def run_demo(weights_dir=None, n=100, out_dir="ensai_demo"):
    """Predict ``n`` simulated test lenses and report errors and speed.

    Args:
        weights_dir: trained-weights folder or one model folder (default:
            the repository's ``trained_weights/``).
        n: number of test lenses (at most the config's ``data.test_size``).
        out_dir: folder for ``table1.md``, ``metrics.json``,
            ``figure1.png`` and ``residuals.png``.

    Returns:
        The evaluation result dict (see :func:`ensai_tf.evaluate.evaluate`).

    Raises:
        ModelDirError: no weights installed, or a corrupt model folder.
    """
    started = time.perf_counter()
    path, label = model_dir.find_weights(weights_dir)
    cfg_path = path / model_dir.CONFIG_YAML
    cfg = config_lib.get_preset("paper")
    if cfg_path.is_file():
        # the test data must match the model's input size; everything else is the fixed test set
        saved = config_lib.load_config(cfg_path)
        cfg = config_lib.apply_overrides(cfg, [f"image.npix={saved.image.npix}"])
    print(f"ensai demo: using {label} from {path}")
    # the demo's folder holds the demo's report: a second demo replaces it
    result = evaluate.evaluate(str(path), n=n, out_dir=out_dir, config=cfg, overwrite=True)
    written = [model_dir.TABLE1_MD, model_dir.METRICS_JSON, model_dir.FIGURE1_PNG,
               reports.RESIDUALS_PNG] + ([reports.CALIBRATION_PNG] if "coverage" in result else [])
    print(f"ensai demo: predicted {n} simulated test lenses with {label} in "
          f"{format_duration(time.perf_counter() - started)} "
          f"({1e3 * result['time_per_lens_s']:.2f} ms per lens in batches of "
          f"{result['batch_size']}, this machine); wrote {out_dir} ({', '.join(written)})",
          flush=True)
    return result
