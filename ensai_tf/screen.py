"""Scoring images with the shipped screening network, and its thresholds.

The screening network (:mod:`ensai_tf.models.screen`) sees only the image,
so one trained network serves every lens-measuring network. It ships in
``trained_weights/screen/`` as ``model.keras`` (loaded in Keras safe mode,
so the file is data, never code) and ``screen.json``: the threshold of each
label, fitted on clean lenses of the fixed validation split so that each
flags at most its share of clean lenses (docs/design.md §8.7), and the
detection rates measured when it was trained.

Example:
    >>> screen = load_screen()          # None when trained_weights/screen is absent
    >>> if screen is not None:
    ...     probabilities = screen_scores(screen, prepared_images)  # (N, 3)
"""

import dataclasses
import json
import pathlib
import zipfile

import numpy as np

from ensai_tf.errors import ModelDirError
from ensai_tf.model_dir import MODEL_KERAS, shipped_weights_dir
from ensai_tf.models.loading import load_keras_model
from ensai_tf.models.screen import SCREEN_LABELS

__all__ = [
    "SCREEN_BUDGET",
    "SCREEN_FOLDER",
    "SCREEN_JSON",
    "Screen",
    "fit_screen_thresholds",
    "load_screen",
    "screen_scores",
]

SCREEN_FOLDER = "screen"
"""The screening network's folder inside ``trained_weights/``."""

SCREEN_JSON = "screen.json"
"""Thresholds and provenance of a screening network, beside its ``model.keras``."""

SCREEN_BUDGET = {"no_lens": 0.012, "lens_light": 0.003, "edge_cut": 0.0005}
"""Fraction of clean validation lenses each label's threshold may flag on its own. ``no_lens``
has the most: the clean lenses above its threshold are those with theta_E below about 0.2
arcsec, whose images are hardly distinguishable from an unlensed galaxy (docs/design.md §8.7)."""


@dataclasses.dataclass(frozen=True)
class Screen:
    """A loaded screening network and its thresholds.

    Attributes:
        model: the ``keras.Model`` images -> logits (:data:`SCREEN_LABELS` order).
        thresholds: dict label -> probability above which the label is raised.
        fitted_on: where the thresholds come from, in words.
    """

    model: object
    thresholds: dict
    fitted_on: str


def screen_scores(screen, images, batch_size=100):
    """Probability of each screening label for prepared images.

    Args:
        screen: a :class:`Screen` (or a bare ``keras.Model`` of
            :func:`ensai_tf.models.screen.build_screen_model`).
        images: ``(N, 192, 192)`` or ``(N, 192, 192, 1)`` prepared images
            (0.04 arcsec pixels, as ``ensai predict`` prepares them).
        batch_size: images per forward pass.

    Returns:
        ``(N, 3)`` float64 probabilities in [0, 1], :data:`SCREEN_LABELS` order.
    """
    model = screen.model if isinstance(screen, Screen) else screen
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 3:
        images = images[..., None]
    if not len(images):
        return np.zeros((0, len(SCREEN_LABELS)))
    logits = np.concatenate([np.asarray(model(images[i:i + batch_size], training=False))
                             for i in range(0, len(images), batch_size)])
    return 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))


def fit_screen_thresholds(scores, budget=None):
    """Each label's threshold: the quantile of clean validation scores leaving its budget above.

    Args:
        scores: ``(N, 3)`` :func:`screen_scores` of clean validation lenses.
        budget: dict label -> fraction (default :data:`SCREEN_BUDGET`).

    Returns:
        dict label -> probability threshold.
    """
    budget = dict(SCREEN_BUDGET if budget is None else budget)
    scores = np.asarray(scores, dtype=np.float64)
    return {label: float(np.quantile(scores[:, j], 1.0 - budget[label]))
            for j, label in enumerate(SCREEN_LABELS)}


def load_screen(folder=None):
    """The screening network of a folder, or the shipped one.

    Args:
        folder: a folder with ``model.keras`` and ``screen.json``; None
            looks in ``trained_weights/screen``.

    Returns:
        a :class:`Screen`, or None when no folder was given and none ships.

    Raises:
        ModelDirError: a given folder (or the shipped one) is incomplete or unreadable.
    """
    if folder is None:
        folder = shipped_weights_dir() / SCREEN_FOLDER
        if not folder.is_dir():
            return None
    folder = pathlib.Path(folder)
    try:
        info = json.loads((folder / SCREEN_JSON).read_text())
        thresholds = {label: float(info["thresholds"][label]) for label in SCREEN_LABELS}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelDirError(f"{str(folder)!r}: no readable {SCREEN_JSON} with a threshold per "
                            f"label ({exc})") from None
    try:
        model = load_keras_model(folder / MODEL_KERAS)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ModelDirError(f"{str(folder / MODEL_KERAS)!r} is not a loadable screening network "
                            f"({exc})") from None
    return Screen(model=model, thresholds=thresholds, fitted_on=str(info.get("fitted_on", "")))
