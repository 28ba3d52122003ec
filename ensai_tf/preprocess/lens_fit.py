"""Fit and subtract a smooth lens-light model in one band (docs/design.md §8.4, "Fitted subtraction").

Real lenses come with their lens galaxy; the networks expect arcs alone. Before
(or instead of) two-band ICA the lens light of each band can be fitted with a
smooth model and subtracted. The arcs are the outliers of that fit, so they
are masked iteratively: fit, mark the pixels whose smoothed positive residual
exceeds ``clip_sigma`` noise sigmas (grown by ``grow_pix`` pixels) as arcs,
refit without them, for ``rounds`` rounds or until the mask stops changing.

Two smooth models are offered (``model=``):

* ``"mge"`` (default): a multi-Gaussian expansion, ``K`` concentric Gaussians
  of fixed, log-spaced circularised widths sharing a centre, axis ratio and
  angle, with non-negative amplitudes. The widths and amplitudes describe any
  monotonic radial profile (Sersic of any index, cores, cusps); a Gaussian
  PSF and the pixel's own width add analytically to each Gaussian's
  covariance, so no convolution is needed. The four shape parameters are
  fitted by ``scipy.optimize.least_squares``; for each trial shape the
  amplitudes (and a sky constant) are the exact non-negative least-squares
  solution (variable projection). Non-negative, concentric Gaussians cannot
  make a ring, so the fit cannot absorb an Einstein ring.
* ``"sersic"``: one elliptical Sersic profile (the circularised-radius
  convention of :mod:`ensai_tf.lensing.light`) with a softening core of half a
  pixel, convolved with the Gaussian PSF; centre, ``r_eff``, ``n`` and shape
  are fitted by ``least_squares``, amplitude and sky linearly.

Which of the two the two-band experiment uses, and why, is in docs/design.md
§8.4 ("Fitted subtraction"): both are measured there.

Units: positions and lengths in arcsec, in the frame of
:func:`ensai_tf.conventions.pixel_grid` extended to any ``(H, W)``: ``x``
along columns, ``y`` along rows, origin at the image centre
``((W - 1) / 2, (H - 1) / 2)`` pixels; angles in radians from +x towards +y
(the major axis); fluxes in the image's own unit per pixel.

This module is numpy + scipy only.
"""

import math

import numpy as np
from scipy import linalg as scipy_linalg
from scipy import ndimage, optimize

from ensai_tf import conventions
from ensai_tf.errors import InputError

__all__ = [
    "MODELS",
    "image_coordinates",
    "sersic_image",
    "fit_lens_light",
    "subtract_lens_light",
]

MODELS = ("mge", "sersic")
"""Names of the smooth lens-light models of :func:`fit_lens_light`."""

_SIGMA_PER_FWHM = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
_MAX_ELLIPTICITY = 0.8  # |e| bound of the shape fit: axis ratio q >= 0.11
_MAD_TO_SIGMA = 1.4826  # sigma of a Gaussian per median absolute deviation
_SIGMA_FLOOR = 1e-4  # least noise sigma of the arc marks, per model peak


def image_coordinates(shape, pixel_scale=conventions.PIXEL_SCALE):
    """Pixel-centre coordinates of an ``(H, W)`` image, arcsec.

    Args:
        shape: ``(H, W)``.
        pixel_scale: pixel side, arcsec.

    Returns:
        ``(x, y)`` float64 arrays of shape ``(H, W)``: ``x = (col - (W - 1) / 2)
        * pixel_scale`` and ``y = (row - (H - 1) / 2) * pixel_scale``; for a
        square image the same as :func:`ensai_tf.conventions.pixel_grid`.

    Example:
        >>> x, y = image_coordinates((2, 3), 0.04)
        >>> x[0].tolist(), y[:, 0].tolist()
        ([-0.04, 0.0, 0.04], [-0.02, 0.02])
    """
    h, w = int(shape[0]), int(shape[1])
    xs = (np.arange(w, dtype=np.float64) - (w - 1) / 2.0) * pixel_scale
    ys = (np.arange(h, dtype=np.float64) - (h - 1) / 2.0) * pixel_scale
    return np.meshgrid(xs, ys, indexing="xy")


def _q_angle(e1, e2):
    """Axis ratio and major-axis angle of the shape parameters ``(e1, e2)``."""
    e = min(math.hypot(e1, e2), _MAX_ELLIPTICITY)
    return (1.0 - e) / (1.0 + e), 0.5 * math.atan2(e2, e1)


def _rotate(x, y, x0, y0, angle):
    """Offsets along the major (``xm``) and minor (``ym``) axes, arcsec."""
    c, s = math.cos(angle), math.sin(angle)
    dx, dy = x - x0, y - y0
    return c * dx + s * dy, -s * dx + c * dy


def _sersic_b(n):
    """Ciotti & Bertin (1999) b_n, as :func:`ensai_tf.lensing.light.sersic_b`."""
    return 2.0 * n - 1.0 / 3.0 + 4.0 / (405.0 * n) + 46.0 / (25515.0 * n * n)


def sersic_image(x, y, amplitude, n, r_eff, q, angle, x0, y0, core=0.0):
    """Elliptical Sersic surface brightness in numpy (the convention of
    :func:`ensai_tf.lensing.light.elliptical_sersic`).

    Args:
        x, y: positions, arcsec.
        amplitude: surface brightness at ``r = r_eff`` (flux per pixel).
        n: Sersic index, > 0.
        r_eff: circularised half-light radius, arcsec.
        q: minor/major axis ratio in (0, 1].
        angle: major-axis angle, radians from +x towards +y.
        x0, y0: centre, arcsec.
        core: softening radius, arcsec (the profile is taken at
            ``sqrt(r**2 + core**2)``).

    Returns:
        float64 array, the broadcast shape of ``x`` and ``y``.

    Example:
        >>> round(float(sersic_image(0.5, 0.0, 2.0, 4.0, 0.5, 1.0, 0.0, 0.0, 0.0)), 6)
        2.0
    """
    xm, ym = _rotate(np.asarray(x, np.float64), np.asarray(y, np.float64), x0, y0, angle)
    r = np.sqrt(q * xm * xm + ym * ym / q + core * core)
    return amplitude * np.exp(-_sersic_b(n) * ((r / r_eff) ** (1.0 / n) - 1.0))


class _Problem:
    """The pixels of one fit: coordinates, data and the linear solve of each model."""

    def __init__(self, image, keep, window, pixel_scale, psf_sigma, sigmas, sparse=None):
        rows, cols = window
        x, y = image_coordinates(image.shape, pixel_scale)
        self.x, self.y = x[rows, cols], y[rows, cols]
        self.data = image[rows, cols]
        self.keep = keep[rows, cols]
        self.used = self.keep if sparse is None else self.keep & sparse[rows, cols]
        self.xk, self.yk, self.dk = self.x[self.used], self.y[self.used], self.data[self.used]
        self.pixel_scale = pixel_scale
        self.psf_sigma = psf_sigma
        # a pixel is a box: its variance pixel**2 / 12 adds to every Gaussian's
        self.extra_var = psf_sigma ** 2 + pixel_scale ** 2 / 12.0
        self.sigmas = sigmas

    # -- multi-Gaussian expansion ------------------------------------------------------
    def mge_basis(self, x, y, shape):
        """``(K, N)`` unit-peak Gaussians (after PSF and pixel) at ``x, y``."""
        x0, y0, e1, e2 = shape
        q, angle = _q_angle(e1, e2)
        xm, ym = _rotate(x, y, x0, y0, angle)
        s2 = self.sigmas[:, None] ** 2
        v_major = s2 / q + self.extra_var
        v_minor = s2 * q + self.extra_var
        return np.exp(-0.5 * (xm[None] ** 2 / v_major + ym[None] ** 2 / v_minor))

    def mge_solve(self, shape):
        """Non-negative amplitudes ``(K,)`` and free sky of the shape, over kept pixels."""
        basis = self.mge_basis(self.xk, self.yk, shape)
        k, n = basis.shape
        # the normal equations are (K + 1) x (K + 1): nnls on their Cholesky factor gives the
        # least-squares solution exactly, far faster than nnls on the N x (K + 1) design
        gram = np.empty((k + 1, k + 1))
        gram[:k, :k] = basis @ basis.T
        gram[:k, k] = gram[k, :k] = basis.sum(axis=1)
        gram[k, k] = n
        rhs = np.append(basis @ self.dk, self.dk.sum())
        # the sky has either sign: it enters nnls as a +1 and a -1 column
        gram = np.block([[gram, -gram[:, k:]], [-gram[k:, :], gram[k:, k:]]])
        rhs = np.append(rhs, -rhs[k])
        gram[np.diag_indices_from(gram)] *= 1.0 + 1e-9
        gram[k:, k:] += 1e-9 * n * np.eye(2)
        chol = np.linalg.cholesky(gram)
        target = scipy_linalg.solve_triangular(chol, rhs, lower=True)
        coef, _ = optimize.nnls(chol.T, target, maxiter=50 * len(target))
        return coef[:k], coef[k] - coef[k + 1], basis

    def mge_residual(self, shape):
        amps, sky, basis = self.mge_solve(shape)
        return self.dk - amps @ basis - sky

    # -- Sersic --------------------------------------------------------------------------
    def sersic_unit(self, p):
        """Unit-amplitude PSF-convolved Sersic on the window grid."""
        x0, y0, e1, e2, log_r, n = p
        q, angle = _q_angle(e1, e2)
        image = sersic_image(self.x, self.y, 1.0, n, math.exp(log_r), q, angle, x0, y0,
                             core=0.5 * self.pixel_scale)
        if self.psf_sigma > 0:
            image = ndimage.gaussian_filter(image, self.psf_sigma / self.pixel_scale,
                                            mode="nearest")
        return image

    def sersic_solve(self, p):
        unit = self.sersic_unit(p)[self.used]
        design = np.stack([unit, np.ones_like(unit)], axis=1)
        (amp, sky), *_ = np.linalg.lstsq(design, self.dk, rcond=None)
        amp = max(amp, 0.0)
        return amp, float(np.mean(self.dk - amp * unit)), unit

    def sersic_residual(self, p):
        amp, sky, unit = self.sersic_solve(p)
        return self.dk - amp * unit - sky


def _check_image(image, mask):
    image = np.asarray(image, dtype=np.float64)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim != 2 or min(image.shape) < 8:
        raise InputError(f"lens-light fit: expected a 2-D image of at least 8 x 8 pixels, got "
                         f"shape {image.shape}")
    if not np.all(np.isfinite(image)):
        raise InputError("lens-light fit: the image contains NaN or Inf; mask bad pixels "
                         "with exactly 0")
    keep = image != 0
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != image.shape:
            raise InputError(f"lens-light fit: the mask has shape {mask.shape}, the image "
                             f"{image.shape}")
        keep &= ~mask
    return image, keep


def _initial_shape(image, keep, x, y, centre_guess, pixel_scale, radius):
    """Centre (brightest smoothed pixel near the guess) and moments-based shape and size."""
    smooth = ndimage.gaussian_filter(np.where(keep, image, 0.0), 1.5)
    gx, gy = centre_guess if centre_guess is not None else (0.0, 0.0)
    near = (np.hypot(x - gx, y - gy) <= (0.3 if centre_guess is not None else 1.0)) & keep
    if not near.any():
        near = keep
    idx = np.argmax(np.where(near, smooth, -np.inf))
    x0, y0 = float(x.flat[idx]), float(y.flat[idx])
    disc = (np.hypot(x - x0, y - y0) <= radius) & keep
    weight = np.clip(smooth, 0.0, None) * disc
    weight = np.where(weight >= 0.1 * weight.max(), weight, 0.0) if weight.max() > 0 else disc
    total = weight.sum()
    if total <= 0:
        return (x0, y0, 0.0, 0.0), 5 * pixel_scale
    dx, dy = x - x0, y - y0
    cxx, cyy, cxy = ((weight * dx * dx).sum() / total, (weight * dy * dy).sum() / total,
                     (weight * dx * dy).sum() / total)
    e1 = (cxx - cyy) / max(cxx + cyy, 1e-12)
    e2 = 2.0 * cxy / max(cxx + cyy, 1e-12)
    # second-moment ellipticity (1 - q^2)/(1 + q^2) -> (1 - q)/(1 + q)
    e = math.hypot(e1, e2)
    if e > 0:
        q = math.sqrt((1.0 - e) / (1.0 + e))
        scale = min((1.0 - q) / (1.0 + q), _MAX_ELLIPTICITY * 0.9) / e
        e1, e2 = e1 * scale, e2 * scale
    size = max(math.sqrt(max(cxx + cyy, 0.0)), 2 * pixel_scale)
    return (x0, y0, e1, e2), size


def _window(shape, centre, radius, pixel_scale):
    """Row and column slices of the square of half-side ``radius`` arcsec about ``centre``."""
    h, w = shape
    c_col = centre[0] / pixel_scale + (w - 1) / 2.0
    c_row = centre[1] / pixel_scale + (h - 1) / 2.0
    half = radius / pixel_scale
    rows = slice(max(int(math.floor(c_row - half)), 0), min(int(math.ceil(c_row + half)) + 1, h))
    cols = slice(max(int(math.floor(c_col - half)), 0), min(int(math.ceil(c_col + half)) + 1, w))
    return rows, cols


def _noise_sigma(values):
    """Robust Gaussian sigma (scaled median absolute deviation) of a 1-D array."""
    med = np.median(values)
    return _MAD_TO_SIGMA * float(np.median(np.abs(values - med)))


def _shape_params(shape):
    """``(x0, y0, e1, e2)`` of a dict with ``x0, y0`` (arcsec), ``q`` and ``angle`` (radians)."""
    try:
        x0, y0, q, angle = (float(shape[k]) for k in ("x0", "y0", "q", "angle"))
    except (KeyError, TypeError, ValueError):
        raise InputError("lens-light fit: shape must be a dict with x0, y0 (arcsec), q and "
                         "angle (radians), e.g. the params of an earlier fit") from None
    if not 0.0 < q <= 1.0:
        raise InputError(f"lens-light fit: shape q must lie in (0, 1], got {q}")
    e = (1.0 - q) / (1.0 + q)
    return [x0, y0, e * math.cos(2.0 * angle), e * math.sin(2.0 * angle)]


def _start(model, image, keep, x, y, centre_guess, shape, pixel_scale, fit_radius):
    """Start vector, bounds and which parameters are free."""
    if shape is None:
        start, size = _initial_shape(image, keep, x, y, centre_guess, pixel_scale, fit_radius)
        start = list(start)
    else:
        start, size = _shape_params(shape), 0.3
    e = _MAX_ELLIPTICITY
    lo = [start[0] - 0.5, start[1] - 0.5, -e, -e]
    hi = [start[0] + 0.5, start[1] + 0.5, e, e]
    if model == "sersic":
        start += [math.log(min(max(size, 2 * pixel_scale), fit_radius)), 4.0]
        lo += [math.log(pixel_scale), 0.5]
        hi += [math.log(10 * fit_radius), 8.0]
    free = np.arange(0 if shape is None else 4, len(start))
    lo, hi = np.array(lo), np.array(hi)
    start = np.clip(np.array(start), lo + 1e-9, hi - 1e-9)
    return start, (lo, hi), free


def _fit_round(problem, model, p, bounds, free, max_nfev):
    """One least-squares fit of the free parameters; returns ``(p, cost)``."""
    residual = problem.mge_residual if model == "mge" else problem.sersic_residual
    if free.size == 0:
        r = residual(p)
        return p, 0.5 * float(r @ r)

    def partial(values):
        full = p.copy()
        full[free] = values
        return residual(full)

    fit = optimize.least_squares(partial, p[free], bounds=(bounds[0][free], bounds[1][free]),
                                 x_scale="jac", max_nfev=max_nfev, diff_step=1e-4)
    p = p.copy()
    p[free] = fit.x
    return p, float(fit.cost)


def _full_model(problem, model, p, x, y):
    """The fitted model on the whole image and its parameter dict."""
    q, angle = _q_angle(p[2], p[3])
    params = {"x0": float(p[0]), "y0": float(p[1]), "q": q, "angle": angle}
    if model == "mge":
        amps, sky, _ = problem.mge_solve(p)
        image = (amps @ problem.mge_basis(x.ravel(), y.ravel(), p) + sky).reshape(x.shape)
        params.update(sigmas=problem.sigmas.tolist(), amplitudes=amps.tolist(), sky=float(sky))
        return image, params
    amp, sky, _ = problem.sersic_solve(p)
    r_eff, n = math.exp(p[4]), float(p[5])
    image = sersic_image(x, y, amp, n, r_eff, q, angle, p[0], p[1],
                         core=0.5 * problem.pixel_scale)
    if problem.psf_sigma > 0:
        image = ndimage.gaussian_filter(image, problem.psf_sigma / problem.pixel_scale,
                                        mode="nearest")
    params.update(amplitude=float(amp), r_eff=r_eff, n=n, sky=float(sky))
    return image + sky, params


def _mark_arcs(resid, keep, x, y, params, model_peak, clip_sigma, grow_pix, protect):
    """Pixels whose smoothed positive residual exceeds ``clip_sigma`` robust sigmas."""
    smooth = ndimage.gaussian_filter(resid, 1.0, mode="nearest")
    # the floor keeps a noiseless image's rounding-level misfit from counting as arcs
    sigma = max(_noise_sigma(smooth[keep]), _SIGMA_FLOOR * model_peak)
    marked = (smooth > clip_sigma * sigma) & keep
    if grow_pix > 0:
        marked = ndimage.binary_dilation(marked, iterations=int(grow_pix)) & keep
    core = np.hypot(x - params["x0"], y - params["y0"]) <= protect
    return marked & ~core


def fit_lens_light(image, pixel_scale=conventions.PIXEL_SCALE, centre_guess=None,
                   psf_fwhm=None, model="mge", mask=None, shape=None, arc_mask=None,
                   fit_radius=2.0, rounds=3, clip_sigma=3.0, grow_pix=2, protect_radius=None,
                   n_gaussians=12, stride=2, dense_radius=0.5, max_nfev=60):
    """Fit a smooth lens-light model to one band, masking the arcs iteratively.

    Args:
        image: ``(H, W)`` (or ``(H, W, 1)``) image, any flux unit; exact zeros
            are masked (docs/design.md §0).
        pixel_scale: pixel side, arcsec.
        centre_guess: ``(x, y)`` of the lens, arcsec (frame of
            :func:`image_coordinates`); the start is the brightest smoothed
            pixel within 0.3 arcsec of it (default: within 1 arcsec of the
            image centre).
        psf_fwhm: Gaussian PSF FWHM of the image, arcsec (None: no PSF).
        model: ``"mge"`` or ``"sersic"`` (module docstring).
        mask: optional ``(H, W)`` bool, True where a pixel is never fitted
            (cosmic rays, bad pixels); combined with the exact zeros.
        shape: optional dict with ``"x0"``, ``"y0"`` (arcsec), ``"q"`` and
            ``"angle"`` (radians), e.g. the ``params`` of a fit to another
            band: centre and shape are then held fixed (the ``"mge"``
            amplitudes, or the ``"sersic"`` ``r_eff``, ``n`` and amplitude,
            are still fitted). For a band where the arcs outshine the lens.
        arc_mask: optional ``(H, W)`` bool, pixels marked as arcs before the
            first fit (e.g. ``params["arc_mask"]`` of another band); later
            rounds re-mark them from this band's residual.
        fit_radius: half-side of the square fitted about the start centre,
            arcsec (the model is evaluated on the whole image afterwards).
        rounds: fits in all, each after re-marking the arcs (>= 1); fewer
            when the marks stop changing.
        clip_sigma: a pixel whose residual, smoothed with a 1-pixel Gaussian,
            exceeds ``clip_sigma`` times that smoothed residual's robust
            sigma is marked as an arc pixel.
        grow_pix: arc marks are grown by this many pixels.
        protect_radius: pixels within this radius of the fitted centre,
            arcsec, are never marked (the core, where misfit is not arcs);
            default the larger of the PSF FWHM and two pixels.
        n_gaussians: widths of the expansion (``"mge"``): log-spaced from
            half a pixel to ``fit_radius``.
        stride, dense_radius: the ``"mge"`` fit uses every pixel within
            ``dense_radius`` arcsec of the start centre and one pixel in
            ``stride x stride`` further out (speed; the final model and
            the arc marks cover every pixel). ``"sersic"`` fits every pixel.
        max_nfev: residual evaluations per round of ``least_squares``.

    Returns:
        ``(model_image, params)``: the ``(H, W)`` float64 model (sky
        included) and a dict: ``"model"``, ``"x0"``, ``"y0"`` (arcsec),
        ``"q"``, ``"angle"`` (radians), ``"sky"`` (image unit); for
        ``"sersic"`` ``"amplitude"`` (surface brightness at ``r_eff``
        before the PSF, image unit), ``"r_eff"`` (arcsec) and ``"n"``; for
        ``"mge"`` ``"sigmas"`` (circularised widths before PSF and pixel,
        arcsec) and ``"amplitudes"`` (each Gaussian's peak after PSF and
        pixel, image unit); ``"arc_mask"`` (``(H, W)`` bool, the pixels
        marked as arcs in the last fit), ``"noise_sigma"`` (robust rms of the
        residual off the arcs, image unit), ``"rounds"`` (fits run) and
        ``"cost"`` (half the sum of squared residuals of the last fit).

    Raises:
        InputError: not a 2-D image, non-finite values, an unknown model, a
            bad ``shape``, or too few unmasked pixels near the lens.

    Example:
        >>> x, y = image_coordinates((64, 64), 0.04)
        >>> img = sersic_image(x, y, 1.0, 2.0, 0.3, 0.8, 0.5, 0.02, -0.01, core=0.02)
        >>> model_image, p = fit_lens_light(img, 0.04, model="sersic", fit_radius=1.2)
        >>> round(p["n"], 2), round(p["r_eff"], 3), round(p["q"], 3)
        (2.0, 0.3, 0.8)
    """
    if model not in MODELS:
        raise InputError(f"unknown lens-light model {model!r}; valid: {', '.join(MODELS)}")
    if int(rounds) < 1:
        raise InputError(f"rounds must be >= 1, got {rounds}")
    image, keep = _check_image(image, mask)
    x, y = image_coordinates(image.shape, pixel_scale)
    psf_sigma = 0.0 if psf_fwhm is None else float(psf_fwhm) * _SIGMA_PER_FWHM
    p, bounds, free = _start(model, image, keep, x, y, centre_guess, shape, pixel_scale,
                             fit_radius)
    window = _window(image.shape, p[:2], fit_radius, pixel_scale)
    sigmas = np.geomspace(0.5 * pixel_scale, max(fit_radius, 2 * pixel_scale), int(n_gaussians))
    sparse = None
    if model == "mge" and stride > 1:
        # every pixel near the centre, one in stride**2 further out: the expansion is
        # evaluated pixel by pixel, so any subset of the pixels can be fitted
        rows, cols = np.indices(image.shape)
        sparse = ((np.hypot(x - p[0], y - p[1]) <= dense_radius)
                  | ((rows % stride == 0) & (cols % stride == 0)))
    protect = (max(psf_fwhm or 0.0, 2 * pixel_scale) if protect_radius is None
               else float(protect_radius))
    arcs = np.zeros(image.shape, bool) if arc_mask is None else np.asarray(arc_mask, bool) & keep
    for done in range(1, int(rounds) + 1):
        problem = _Problem(image, keep & ~arcs, window, pixel_scale, psf_sigma, sigmas, sparse)
        if problem.dk.size < 4 * len(p) + 16:
            raise InputError(f"lens-light fit: only {problem.dk.size} unmasked pixels within "
                             f"{fit_radius} arcsec of the lens; too few to fit")
        p, cost = _fit_round(problem, model, p, bounds, free, max_nfev)
        model_image, params = _full_model(problem, model, p, x, y)
        resid = np.where(keep, image - model_image, 0.0)
        if done == int(rounds):
            break
        new_arcs = _mark_arcs(resid, keep, x, y, params, float(np.max(np.abs(model_image))),
                              clip_sigma, grow_pix, protect)
        if np.array_equal(new_arcs, arcs):
            break
        arcs = new_arcs
    params.update(model=model, arc_mask=arcs, rounds=done, cost=cost,
                  noise_sigma=_noise_sigma(resid[keep & ~arcs]))
    return model_image, params


def subtract_lens_light(image, pixel_scale=conventions.PIXEL_SCALE, **kwargs):
    """The image minus its fitted lens light (:func:`fit_lens_light`).

    Args:
        image: ``(H, W)`` image; exact zeros are masked and stay exactly 0.
        pixel_scale: pixel side, arcsec.
        **kwargs: passed to :func:`fit_lens_light` (``centre_guess``,
            ``psf_fwhm``, ``model``, ``mask``, ``shape``, ...).

    Returns:
        ``(H, W)`` float64 residual, image unit: the arcs (and noise) on a
        sky of about 0, masked pixels exactly 0.

    Example:
        >>> x, y = image_coordinates((64, 64), 0.04)
        >>> img = sersic_image(x, y, 1.0, 1.5, 0.3, 0.9, 0.0, 0.0, 0.0, core=0.02)
        >>> bool(abs(subtract_lens_light(img, 0.04, fit_radius=1.2)).max() < 0.01 * img.max())
        True
    """
    image, _ = _check_image(image, None)
    model_image, _ = fit_lens_light(image, pixel_scale, **kwargs)
    return np.where(image != 0, image - model_image, 0.0)
