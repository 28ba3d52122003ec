"""Observational effects of docs/design.md §5 as batched, graph-safe TF ops.

Each effect lives in its own module of :mod:`ensai_tf.data.effects` (shift,
PSF, Poisson, cosmic rays, Gaussian noise, levels, masks); this module
chains them and re-exports their public names. Each effect is a pair
(docs/design.md §11 rule 3, the Keras ``RandomGaussianBlur`` split):

- ``sample_<effect>(seeds, ..., cfg) -> draws``: a dict of ``(B, ...)``
  tensors, a pure function of the per-example seeds (and, for the shift and
  the masks, of the clean arcs). Every effect derives its own stream as
  ``tf.random.fold_in(seed_i, Effect.<EFFECT>)`` and draws with
  ``tf.random.stateless_*`` one example at a time (``tf.map_fn``; vectorised
  maps fall back to the same loop for stateless ops), so example ``i``'s
  draws never depend on the batch it sits in.
- ``apply_<effect>(images, draws, ...) -> images``: deterministic given the
  draws; per-example on/off through ``tf.where`` on a drawn ``apply_<effect>``
  flag, never Python branching on tensor values.

Per-pixel randomness that depends on the image (Poisson) or that would be
bulky to store (Gaussian noise fields) is carried in the draws as a
per-example seed (``poisson_seed``, ``noise_seed``), so the draws stay small
enough to store beside frozen validation/test images and still fix the
result exactly.

:func:`observe` chains them in the code order of docs/design.md §5.3: shift (+labels),
lens light, PSF, Poisson, cosmic rays, Gaussian noise, normalisation, zero
bias, masks; then redraws non-finite examples (docs/design.md §9 #23). Images are
``(B, 192, 192, 1)`` float32 ``[b, row, col, 0]`` with x = column, y = row
(docs/design.md §0); labels ``(B, 5)`` in :data:`ensai_tf.conventions.PARAM_NAMES`
order, and only :func:`shift_params` changes them.
"""

import tensorflow as tf

from ensai_tf import conventions
from ensai_tf.data.draws import fold_seeds
from ensai_tf.data.effects.base import Effect, per_image
from ensai_tf.data.effects.cosmic_rays import apply_cosmic_rays, sample_cosmic_rays
from ensai_tf.data.effects.gaussian_noise import apply_noise, noise_spectrum, sample_noise
from ensai_tf.data.effects.levels import (apply_normalise, apply_peak_normalise, apply_zero_bias,
                                          sample_normalise, sample_zero_bias)
from ensai_tf.data.effects.masks import apply_masks, mask_from_draws, sample_masks
from ensai_tf.data.effects.poisson import apply_poisson, sample_poisson
from ensai_tf.data.effects.psf import (airy_halo_psf, apply_psf, blur_matrices, load_psf,
                                       psf_kernel, sample_psf)
from ensai_tf.data.effects.shift import (apply_shift, kept_flux_fraction, sample_shift,
                                         shift_params)
from ensai_tf.errors import InputError

__all__ = [
    "Effect",
    "sample_shift",
    "apply_shift",
    "shift_params",
    "kept_flux_fraction",
    "sample_psf",
    "apply_psf",
    "psf_kernel",
    "load_psf",
    "blur_matrices",
    "airy_halo_psf",
    "sample_poisson",
    "apply_poisson",
    "sample_cosmic_rays",
    "apply_cosmic_rays",
    "sample_noise",
    "apply_noise",
    "noise_spectrum",
    "sample_normalise",
    "apply_normalise",
    "sample_zero_bias",
    "apply_zero_bias",
    "apply_peak_normalise",
    "sample_masks",
    "mask_from_draws",
    "apply_masks",
    "check_inputs",
    "redraw_non_finite",
    "run_chain",
    "observe",
]


def check_inputs(arcs, params, seeds, lens_light):
    """Validate and cast the inputs of :func:`observe`.

    Returns:
        ``(arcs float32, params, seeds int64, lens_light float32 or None)``.

    Raises:
        InputError: for inputs of the wrong rank, shape or dtype.
    """
    arcs = tf.convert_to_tensor(arcs)
    params = tf.convert_to_tensor(params)
    seeds = tf.convert_to_tensor(seeds)
    if arcs.shape.rank != 4 or arcs.shape[-1] != 1 or arcs.shape[1] != arcs.shape[2]:
        raise InputError(f"observe: arcs must have shape (B, n, n, 1), got {arcs.shape}")
    if arcs.shape[1] is None:
        raise InputError("observe: the image side of arcs must be known statically")
    if params.shape.rank != 2 or params.shape[-1] != conventions.NUM_PARAMS:
        raise InputError(f"observe: params must have shape (B, {conventions.NUM_PARAMS}) "
                         f"in order {conventions.PARAM_NAMES}, got {params.shape}")
    if seeds.shape.rank != 2 or seeds.shape[-1] != 2 or not seeds.dtype.is_integer:
        raise InputError(f"observe: seeds must be (B, 2) integers, got {seeds.shape} "
                         f"{seeds.dtype.name}")
    if lens_light is not None:
        lens_light = tf.convert_to_tensor(lens_light, tf.float32)
        if lens_light.shape.rank != 4 or lens_light.shape[1:] != arcs.shape[1:]:
            raise InputError(f"observe: lens_light must have the shape of arcs {arcs.shape}, "
                             f"got {lens_light.shape}")
    return tf.cast(arcs, tf.float32), params, tf.cast(seeds, tf.int64), lens_light


def _chain(arcs, params, seeds, cfg, training, lens_light, kernel, spectrum):
    """One pass of the effect chain of docs/design.md §5.3 (code order)."""
    draws = dict(sample_shift(seeds, arcs, params, cfg))
    shifted = apply_shift(arcs, draws)
    labels = shift_params(params, draws)
    image = shifted
    if lens_light is not None:
        image = image + apply_shift(lens_light, draws)  # [R] docs/design.md §4: before the PSF
    for sample in (sample_psf, sample_poisson, sample_noise, sample_normalise,
                   sample_zero_bias):
        draws.update(sample(seeds, cfg))
    draws.update(sample_cosmic_rays(seeds, cfg, arcs.shape[1]))
    draws.update(sample_masks(seeds, shifted, cfg, training))
    image = apply_psf(image, draws, kernel, max_sigma_pix=cfg.psf_sigma_pix[1])
    image = apply_poisson(image, draws, cfg.poisson_exact_below)
    image = apply_cosmic_rays(image, draws)
    image = apply_noise(image, draws, spectrum)
    image = apply_normalise(image, draws, shifted, cfg.norm_threshold)
    image = apply_zero_bias(image, draws)
    image, mask = apply_masks(image, draws, cfg.mask_radius_arcsec)
    if cfg.peak_normalise:
        image = apply_peak_normalise(image)  # docs/design.md §5.7: the image's own peak
    return {"image": image, "params": labels, "mask": mask, "draws": draws}


def _finite(out):
    ok_image = tf.reduce_all(tf.math.is_finite(out["image"]), axis=[1, 2, 3])
    ok_params = tf.reduce_all(tf.math.is_finite(out["params"]), axis=1)
    return ok_image & ok_params


def observe(arcs, params, seeds, cfg, training=True, lens_light=None):
    """Apply the observational effects of docs/design.md §5 to a batch of noise-free arcs.

    Pure TF, graph-safe (works eagerly, in ``tf.function`` and in
    ``tf.data.Dataset.map``). Example ``i`` depends only on its own row of
    ``arcs``, ``params``, ``lens_light`` and ``seeds``.

    Order (docs/design.md §5.3, code order): shift (labels too) -> lens light (shifted
    identically, added before the PSF, docs/design.md §4 [R]) -> PSF -> Poisson ->
    cosmic rays -> Gaussian noise -> normalisation over arc pixels > 0.4
    (docs/design.md §5.7) -> zero bias -> masks (exact zeros) -> with
    ``cfg.peak_normalise``, division by the image's own peak
    (:func:`apply_peak_normalise`). Examples whose
    image or labels come out non-finite are redrawn from
    ``fold_in(fold_in(seed_i, Effect.REDRAW), attempt)`` up to
    ``cfg.max_redraws`` times, never zeroed (docs/design.md §9 #23 [R]).

    Args:
        arcs: ``(B, n, n, 1)`` float32 noise-free arcs, peak 1 (docs/design.md §3.5).
        params: ``(B, 5)`` labels (theta_E, e_x, e_y, x_L, y_L); arcsec,
            -, -, arcsec, arcsec.
        seeds: ``(B, 2)`` int32/int64 per-example stateless seeds.
        cfg: :class:`ensai_tf.config.ObserveConfig`.
        training: selects the mask flux floor (0.75 train, 0.98 eval).
        lens_light: optional ``(B, n, n, 1)`` lens-light images, same units.

    Returns:
        dict: ``"image"`` ``(B, n, n, 1)`` float32; ``"params"`` ``(B, 5)``
        shifted labels (input dtype); ``"mask"`` ``(B, n, n, 1)`` float32,
        1 = kept, 0 = masked; ``"draws"``: dict of per-example draws
        (``(B, ...)``), including ``"redraw_attempt"`` (0 = first pass).

    Raises:
        InputError: for inputs of the wrong rank, shape or dtype.
    """
    def chain(arcs, params, seeds, lens_light, kernel, spectrum):
        return _chain(arcs, params, seeds, cfg, training, lens_light, kernel, spectrum)

    return run_chain(chain, arcs, params, seeds, cfg, lens_light)


def run_chain(chain, arcs, params, seeds, cfg, lens_light=None):
    """Check the inputs, trace an effect chain once and run it with its redraws.

    The shared driver of :func:`observe` and of the two-band chain
    (:func:`ensai_tf.data.two_bands.observe_two_bands`).

    Args:
        chain: ``chain(arcs, params, seeds, lens_light, kernel, spectrum)`` -> dict with
            ``"image"``, ``"params"``, ``"mask"`` and ``"draws"``.
        arcs, params, seeds, lens_light: as :func:`observe`.
        cfg: :class:`ensai_tf.config.ObserveConfig` (PSF kernel, noise spectrum, redraws).

    Returns:
        the result of :func:`redraw_non_finite`.

    Raises:
        InputError: for inputs of the wrong rank, shape or dtype.
    """
    arcs, params, seeds, lens_light = check_inputs(arcs, params, seeds, lens_light)
    kernel = psf_kernel(cfg, arcs.shape[1])
    spectrum = noise_spectrum(cfg, arcs.shape[1])

    def traced(example_seeds):
        return chain(arcs, params, example_seeds, lens_light, kernel, spectrum)

    # The chain is traced once and called for the first pass and for every redraw: tracing it
    # a second time inside the while loop doubled the time to build a pipeline. Same ops,
    # same seeds, so the same images.
    run = tf.function(traced, autograph=False).get_concrete_function(
        tf.TensorSpec(seeds.shape, tf.int64))
    return redraw_non_finite(run, seeds, cfg.max_redraws)


def redraw_non_finite(run, seeds, max_redraws):
    """Run a traced effect chain and redraw its non-finite examples (docs/design.md §9 #23 [R]).

    Args:
        run: the traced chain, ``(B, 2)`` int64 seeds -> dict with ``"image"``,
            ``"params"`` and ``"draws"``.
        seeds: ``(B, 2)`` int64 per-example seeds.
        max_redraws: attempts at most (``cfg.max_redraws``).

    Returns:
        the chain's result, every non-finite example replaced by its first
        finite redraw from ``fold_in(fold_in(seed_i, REDRAW), attempt)``;
        ``draws["redraw_attempt"]`` (0 = first pass).
    """
    out = run(seeds)
    out["draws"]["redraw_attempt"] = tf.zeros_like(seeds[:, 0], tf.int32)
    if max_redraws > 0:
        out = _redraw(run, seeds, out, max_redraws)
    tf.debugging.Assert(tf.reduce_all(_finite(out)), [
        "observe: examples still non-finite after cfg.max_redraws redraws; "
        "check the input arcs and params for NaN/Inf"])
    return out


def _redraw(run, seeds, out, max_redraws):
    """Redraw non-finite examples from ``fold_in(fold_in(seed_i, REDRAW), attempt)``.

    Args:
        run: the traced effect chain, ``seeds -> result dict``.
        seeds: ``(B, 2)`` int64 per-example seeds.
        out: the first pass's result.
        max_redraws: attempts at most (``cfg.max_redraws``).

    Returns:
        the result with every non-finite example replaced by its first
        finite redraw (docs/design.md §9 #23 [R]).
    """
    redraw_base = fold_seeds(seeds, Effect.REDRAW)

    def cond(attempt, result):
        return (attempt <= max_redraws) & tf.logical_not(tf.reduce_all(_finite(result)))

    def body(attempt, result):
        new = run(fold_seeds(redraw_base, attempt))
        new["draws"]["redraw_attempt"] = tf.fill(tf.shape(seeds[:, :1])[:1], attempt)
        bad = tf.logical_not(_finite(result))
        merged = tf.nest.map_structure(
            lambda old, fresh: tf.where(per_image(bad, fresh.shape.rank), fresh, old),
            result, new)
        return attempt + 1, merged

    _, out = tf.while_loop(cond, body, (tf.constant(1), out))
    return out
