"""``ensai demo``: predict simulated test lenses with the shipped weights.

Uses ``trained_weights/`` (the folder next to the package in a source
checkout): the combined model when present (``trained_weights/combined``),
else the single network with the smallest mean 68% error in its
``metrics.json``. It predicts the first ``n`` lenses of the fixed test set,
prints the error table and the time per lens, and writes Table 1 and
Figure 1 into ``out_dir``. Without weights it raises ``ModelDirError``
saying how to train them.
"""

import json
import pathlib

import numpy as np

from ensai_tf import config as config_lib
from ensai_tf import predict
from ensai_tf.errors import ModelDirError

__all__ = ["default_weights_dir", "find_weights", "run_demo"]

_NETWORK_ORDER = ("overfeat", "ensai_net", "alexnet", "inception_v4")


def default_weights_dir():
    """The repository's ``trained_weights/`` folder (next to the package)."""
    return pathlib.Path(__file__).resolve().parent.parent / "trained_weights"


def _mean_error68(path):
    try:
        data = json.loads((path / "metrics.json").read_text())
        return float(np.mean([v["error68"] for k, v in data["metrics"].items() if k != "n"]))
    except (OSError, ValueError, KeyError, TypeError):
        return float("inf")


def find_weights(weights_dir=None):
    """The model folder the demo uses.

    Args:
        weights_dir: folder of trained networks (default
            :func:`default_weights_dir`), or a single model folder.

    Returns:
        ``(path, label)``: the combined model if present, else the network
        with the smallest mean 68% error (ties: paper order).

    Raises:
        ModelDirError: no trained model is installed, with instructions.
    """
    root = pathlib.Path(weights_dir) if weights_dir is not None else default_weights_dir()
    how = ("train one with 'ensai train --model alexnet --preset cpu --model-dir runs/alexnet' "
           "and run 'ensai demo --weights runs/alexnet', or see trained_weights/README.md")
    if not root.is_dir():
        raise ModelDirError(f"no trained weights are installed: {str(root)!r} does not exist; {how}")
    if predict.is_model(root):
        return root, root.name
    if predict.is_model(root / "combined"):
        return root / "combined", "combined"
    singles = [p for p in sorted(root.iterdir()) if p.is_dir() and predict.is_model(p)]
    if not singles:
        raise ModelDirError(f"no trained weights are installed in {str(root)!r}; {how}")

    def rank(p):
        order = _NETWORK_ORDER.index(p.name) if p.name in _NETWORK_ORDER else len(_NETWORK_ORDER)
        return (_mean_error68(p), order, p.name)

    best = min(singles, key=rank)
    return best, best.name


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
    from ensai_tf import evaluate

    path, label = find_weights(weights_dir)
    cfg_path = path / "config.yaml"
    cfg = config_lib.get_preset("paper")
    if cfg_path.is_file():
        # the test data must match the model's input size; everything else is the fixed test set
        saved = config_lib.load_config(cfg_path)
        cfg = config_lib.apply_overrides(cfg, [f"image.npix={saved.image.npix}"])
    print(f"ensai demo: using {label} from {path}")
    result = evaluate.evaluate(str(path), n=n, out_dir=out_dir, config=cfg)
    print(f"ensai demo: {1e3 * result['time_per_lens_s']:.2f} ms per lens "
          f"(batch {result['batch_size']})")
    return result
