"""The paths of the lens-light report: how each turns a lens into five parameters
(docs/design.md §8.4).

A **path** is a function of a :class:`TwoBandBatch` (the lenses of one colour
ratio, :func:`make_batch`) that returns ``(N, 5)`` parameters (arcsec, -, -,
arcsec, arcsec). :func:`standard_paths` gives those of
:func:`ensai_tf.lens_light_report.lens_light_experiment`, in report order:
``ICA``, ``fitted subtraction + ICA``, ``fitted subtraction`` (two bands),
the three single-band paths of :func:`single_band_paths`, and the lens-light
network paths; :func:`image_path` makes a path of any single-band map and
network. The module docstring of :mod:`ensai_tf.lens_light_report` says what
each path does.
"""

import dataclasses
import time

import numpy as np

from ensai_tf import conventions, twoband
from ensai_tf.errors import InputError
from ensai_tf.inference import predict_images
from ensai_tf.prediction import LENS_LIGHT_FLAG
from ensai_tf.preprocess import ica
from ensai_tf.preprocess.images import PreparedImage, normalise_peak
from ensai_tf.realdata.lens_light import subtract_single_band
from ensai_tf.realdata.psf import match_psfs

__all__ = [
    "TwoBandBatch",
    "SingleBand",
    "make_batch",
    "image_path",
    "stacked_bands_path",
    "single_band_paths",
    "standard_paths",
]

_ICA = "ICA"
_FITTED_ICA = "fitted subtraction + ICA"
_FITTED = "fitted subtraction"
_SINGLE_LEFT = "single band, lens light left in"
_SINGLE_FITTED = "single band, fitted subtraction"
_SINGLE_AUTO = "single band, auto"
_NETWORK = "lens-light network"
_NETWORK_SCALED = "lens-light network, truth-scaled"
_TWO_BAND_NETWORK = "two-band network"
_CHUNK = 100  # images per forward pass of the single-band paths

@dataclasses.dataclass
class TwoBandBatch:
    """The lenses of one colour ratio, as a path sees them.

    Attributes:
        blue, red: ``(N, n, n)`` float64 observed bands (arcs peak 1 in blue).
        fwhm_blue, fwhm_red: ``(N,)`` Gaussian PSF FWHMs, arcsec.
        colour_ratio: kappa of the batch.
        brightness: ``(N,)`` red-band lens-light peak / arcs' peak.
        arc_peak_red: ``(N,)`` the arcs' red peak before the PSF, in red-band
            units (truth, for diagnostics only).
        pixel_scale: pixel side, arcsec.
        fit_model: lens-light model of the fitted paths (``"mge"``/``"sersic"``).
        fit_seconds: wall time of each lens's two fits (filled by :meth:`fitted`).
    """

    blue: np.ndarray
    red: np.ndarray
    fwhm_blue: np.ndarray
    fwhm_red: np.ndarray
    colour_ratio: float
    brightness: np.ndarray
    arc_peak_red: np.ndarray
    pixel_scale: float = conventions.PIXEL_SCALE
    fit_model: str = "mge"
    fit_seconds: list = dataclasses.field(default_factory=list)
    _fitted: list = dataclasses.field(default=None, repr=False)
    _single: object = dataclasses.field(default=None, repr=False)

    def __len__(self):
        return len(self.blue)

    def single_band(self, predictor):
        """:class:`SingleBand` of the red bands, computed once and shared by the paths.

        Args:
            predictor: the :class:`ensai_tf.prediction.TablePredictor` of the
                evaluated network (its quality flags decide ``auto``).
        """
        if self._single is None:
            self._single = _single_band(self, predictor)
        return self._single

    def fitted(self):
        """:class:`ensai_tf.realdata.lens_light.FittedArcs` of every lens (ICA on the residuals
        included), computed once and shared by the paths."""
        if self._fitted is None:
            self._fitted = []
            for i in range(len(self)):
                start = time.perf_counter()
                self._fitted.append(twoband.recover_arcs_fitted(
                    self.blue[i], self.red[i], self.fwhm_blue[i], self.fwhm_red[i], unmix=True,
                    model=self.fit_model, pixel_scale=self.pixel_scale))
                self.fit_seconds.append(time.perf_counter() - start)
        return self._fitted


@dataclasses.dataclass(frozen=True)
class SingleBand:
    """The red band alone through ``ensai predict``'s single-band path, lens by lens.

    Attributes:
        left: ``(N, 5)`` parameters of the band as given (``--subtract-lens-light never``).
        fitted: ``(N, 5)`` parameters of the band minus its fitted lens light
            (``always``; a lens whose fit failed is predicted as given).
        flagged: ``(N,)`` bool, the band as given raised the ``lens_light``
            flag (``auto`` subtracts exactly those).
        failed: number of lenses whose lens-light fit failed.
        fit_seconds: ``(N,)`` wall time of each fit, seconds.
    """

    left: np.ndarray
    fitted: np.ndarray
    flagged: np.ndarray
    failed: int
    fit_seconds: np.ndarray

    @property
    def auto(self):
        """``(N, 5)`` parameters of ``--subtract-lens-light auto``."""
        return np.where(self.flagged[:, None], self.fitted, self.left)


def _predict_items(predictor, items):
    """``(N, 5)`` parameters and ``(N,)`` lens-light flags of prepared images, by chunks."""
    rows = [row for i in range(0, len(items), _CHUNK)
            for row in predictor.rows(items[i:i + _CHUNK], subtract="never")]
    params = np.array([[row[name] for name in conventions.PARAM_NAMES] for row in rows])
    return params, np.array([LENS_LIGHT_FLAG in row["flags"] for row in rows])


def _single_band(batch, predictor):
    """The :class:`SingleBand` of a batch: the red band prepared as ``ensai predict`` prepares
    an image, predicted as it is and minus its fitted lens light."""
    centre = ((batch.red.shape[1] - 1) / 2.0,) * 2
    items = [PreparedImage(name=f"red band of lens {i}", file="red band", index=i,
                           image=ica.to_network_input(normalise_peak(batch.red[i], "red band")),
                           centre_pix=centre, scale_arcsec=(batch.pixel_scale,) * 2)
             for i in range(len(batch))]
    left, flagged = _predict_items(predictor, items)
    subtracted, seconds, failed = [], [], 0
    for item in items:
        start = time.perf_counter()
        try:
            image, _ = subtract_single_band(item.image, pixel_scale=batch.pixel_scale,
                                            name=item.name)
            subtracted.append(dataclasses.replace(item, image=image))
        except InputError:
            subtracted.append(item)
            failed += 1
        seconds.append(time.perf_counter() - start)
    fitted, _ = _predict_items(predictor, subtracted)
    return SingleBand(left=left, fitted=fitted, flagged=flagged, failed=failed,
                      fit_seconds=np.asarray(seconds))


def single_band_paths(predictor):
    """The three single-band paths of the report (:mod:`ensai_tf.lens_light_report`), by name.

    Args:
        predictor: :class:`ensai_tf.prediction.TablePredictor` of the evaluated network.

    Returns:
        dict ``{name: path}``, each path mapping a :class:`TwoBandBatch` to
        ``(N, 5)`` parameters from its red band (:meth:`TwoBandBatch.single_band`).
    """
    return {_SINGLE_LEFT: lambda batch: batch.single_band(predictor).left,
            _SINGLE_FITTED: lambda batch: batch.single_band(predictor).fitted,
            _SINGLE_AUTO: lambda batch: batch.single_band(predictor).auto}


def make_batch(arcs, params, draws, brightness, colour_ratio, fit_model="mge",
               pixel_scale=conventions.PIXEL_SCALE):
    """Render the two bands of every lens at one colour ratio and brightness.

    Args:
        arcs: ``(N, n, n)`` noise-free arcs, peak 1.
        params: ``(N, 5)`` lens parameters.
        draws: dict of :func:`ensai_tf.twoband.sample_two_band`; its
            ``colour_ratio`` and ``lens_to_arc`` are replaced.
        brightness: ``(N,)`` red-band lens-light peak / arcs' peak.
        colour_ratio: kappa.
        fit_model: lens-light model of the fitted paths.
        pixel_scale: pixel side, arcsec.

    Returns:
        :class:`TwoBandBatch`.
    """
    n = len(arcs)
    d = dict(draws, colour_ratio=np.full(n, float(colour_ratio)))
    # the arcs' red peak is g_ar = 1 / (kappa f_lb) of their blue peak (twoband's model)
    arc_peak_red = 1.0 / (float(colour_ratio) * np.asarray(d["lens_blue_red"], np.float64))
    d["lens_to_arc"] = np.asarray(brightness, np.float64) * arc_peak_red
    bands = twoband.apply_two_band(arcs, params, d, pixel_scale)
    return TwoBandBatch(blue=bands["blue"], red=bands["red"], fwhm_blue=np.asarray(d["fwhm_blue"]),
                        fwhm_red=np.asarray(d["fwhm_red"]), colour_ratio=float(colour_ratio),
                        brightness=np.asarray(brightness, np.float64), arc_peak_red=arc_peak_red,
                        pixel_scale=pixel_scale, fit_model=fit_model)


def image_path(prepare, predict_fn):
    """A path that prepares one single-band image per lens and runs a network on them.

    Args:
        prepare: ``prepare(batch, i)`` -> ``(n, n)`` map of lens ``i``, masked
            pixels exactly 0.
        predict_fn: a function of :func:`ensai_tf.inference.load_predictor`.

    Returns:
        ``path(batch)`` -> ``(N, 5)`` float64 parameters.
    """
    def path(batch):
        images = np.stack([ica.to_network_input(prepare(batch, i)) for i in range(len(batch))])
        return predict_images(predict_fn, images)

    return path


def _ica_arc(batch, i):
    return twoband.recover_arcs(batch.blue[i], batch.red[i], batch.fwhm_blue[i],
                                batch.fwhm_red[i], pixel_scale=batch.pixel_scale).arc


def _fitted_ica_arc(batch, i):
    return batch.fitted()[i].ica.arc


def _fitted_arc(batch, i):
    return normalise_peak(batch.fitted()[i].residual_blue, "lens-subtracted blue band")


def _red_band(batch, i):
    return normalise_peak(batch.red[i], "red band")


def _red_band_truth_scaled(batch, i):
    return batch.red[i] / batch.arc_peak_red[i]


def _matched_bands(batch, i):
    """Lens ``i``'s PSF-matched bands, each over its own peak, as ``(n, n, 2)`` channels."""
    blue, red = match_psfs(batch.blue[i], batch.red[i], batch.fwhm_blue[i], batch.fwhm_red[i],
                           batch.pixel_scale)
    return np.stack([normalise_peak(blue, "blue band"), normalise_peak(red, "red band")],
                    axis=-1).astype(np.float32)


def stacked_bands_path(predict_fn):
    """The path of a network trained on both bands (docs/design.md §5.10).

    Each lens's bands are PSF-matched and scaled to their own peaks, as
    ``ensai predict --bands`` prepares them for such a network
    (:func:`ensai_tf.realdata.lens_light.stack_bands`), and read together.

    Args:
        predict_fn: a :func:`ensai_tf.inference.load_predictor` function taking
            ``(B, n, n, 2)`` images (blue, red).

    Returns:
        ``path(batch)`` -> ``(N, 5)`` float64 parameters.
    """
    def path(batch):
        return predict_images(predict_fn, np.stack([_matched_bands(batch, i)
                                                    for i in range(len(batch))]))

    return path


def standard_paths(predict_fn, lens_light_fn=None, table_predictor=None, two_band_fn=None):
    """The paths of the report, by name, in report order (the ceiling is separate).

    Args:
        predict_fn: the evaluated network (arcs without lens light).
        lens_light_fn: optional single-band network trained with lens light.
        table_predictor: optional :class:`ensai_tf.prediction.TablePredictor`
            of the evaluated network, for the single-band paths
            (:func:`single_band_paths`).
        two_band_fn: optional network trained on both bands (:func:`stacked_bands_path`).

    Returns:
        dict ``{name: path}``, each path mapping a :class:`TwoBandBatch` to
        ``(N, 5)`` parameters (:mod:`ensai_tf.lens_light_report`).
    """
    paths = {_ICA: image_path(_ica_arc, predict_fn),
             _FITTED_ICA: image_path(_fitted_ica_arc, predict_fn),
             _FITTED: image_path(_fitted_arc, predict_fn)}
    if table_predictor is not None:
        paths.update(single_band_paths(table_predictor))
    if lens_light_fn is not None:
        paths[_NETWORK] = image_path(_red_band, lens_light_fn)
        paths[_NETWORK_SCALED] = image_path(_red_band_truth_scaled, lens_light_fn)
    if two_band_fn is not None:
        paths[_TWO_BAND_NETWORK] = stacked_bands_path(two_band_fn)
    return paths
