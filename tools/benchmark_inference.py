"""Time per lens of the networks against a classical lenstronomy fit of the same lens.

Prints, measured in one run on this machine:

1. the time per lens of the combined model at batch 100 (trained models
   given with --model, each timed in the same run, e.g. a combined network
   with and without averaging over views; else the four paper networks built
   untrained behind the combiner: timing does not depend on the weights;
   --network NAME times one untrained network instead);
2. when lenstronomy is installed, the wall time of a particle-swarm fit
   (FittingSequence, PSO) of the same simulated lens with an SIE and an
   elliptical Sersic source, and the ratio of the two (docs/design.md §10.2: the paper
   claims ~10^7 against maximum-likelihood modelling; the goal here is
   >= 10^6), against the first model; --no-fit skips it.

The lens is rendered once with lenstronomy (SIE + elliptical Sersic source,
Gaussian PSF, noise) on the package's 192 x 192, 0.04" grid (x = column,
y = row, docs/design.md §0), normalised to peak 1, and fed to both methods.

Usage:
    python tools/benchmark_inference.py [--model DIR [DIR ...]] [--network NAME]
        [--batch 100] [--repeats 3] [--particles 60] [--iterations 100] [--no-fit]
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from ensai_tf import conventions  # noqa: E402

__all__ = ["render_lens", "time_network", "time_lenstronomy_fit", "main"]

TRUE_LENS = {"theta_e": 1.2, "e_x": 0.25, "e_y": -0.15, "x_l": 0.06, "y_l": -0.03}
TRUE_SOURCE = {"amp": 20.0, "R_sersic": 0.15, "n_sersic": 1.5, "e1": 0.1, "e2": -0.05,
               "center_x": 0.05, "center_y": 0.02}


def _lenstronomy_lens_kwargs(theta_e, e_x, e_y, x_l, y_l):
    """lenstronomy SIE kwargs of an Ensai lens (docs/design.md §2.1: major axis at phi + 90 deg)."""
    eps = np.hypot(e_x, e_y)
    q = 1.0 - eps
    phi = np.arctan2(e_y, e_x)
    g = (1.0 - q) / (1.0 + q)
    return {"theta_E": theta_e, "e1": -g * np.cos(2 * phi), "e2": -g * np.sin(2 * phi),
            "center_x": x_l, "center_y": y_l}


def _data_kwargs(image, noise_rms):
    npix, scale = conventions.NPIX, conventions.PIXEL_SCALE
    origin = -(npix - 1) / 2.0 * scale
    return {"image_data": image, "background_rms": noise_rms, "exposure_time": 1000.0,
            "ra_at_xy_0": origin, "dec_at_xy_0": origin,
            "transform_pix2angle": np.array([[scale, 0.0], [0.0, scale]])}


def render_lens(seed=0, noise_rms=0.03):
    """The benchmark lens: ``(image (192, 192) peak 1, noise rms, kwargs)``."""
    from lenstronomy.Data.imaging_data import ImageData
    from lenstronomy.Data.psf import PSF
    from lenstronomy.ImSim.image_model import ImageModel
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LightModel.light_model import LightModel

    data = ImageData(**_data_kwargs(np.zeros((conventions.NPIX,) * 2), noise_rms))
    psf = PSF(psf_type="GAUSSIAN", fwhm=0.1)
    model = ImageModel(data, psf, lens_model_class=LensModel(["SIE"]),
                       source_model_class=LightModel(["SERSIC_ELLIPSE"]),
                       kwargs_numerics={"supersampling_factor": 1})
    kwargs_lens = [_lenstronomy_lens_kwargs(**TRUE_LENS)]
    clean = model.image(kwargs_lens, [TRUE_SOURCE])
    clean = clean / clean.max()
    rng = np.random.default_rng(seed)
    image = clean + rng.normal(0.0, noise_rms, clean.shape)
    return image, noise_rms, {"lens": kwargs_lens, "source": [TRUE_SOURCE]}


def _untrained_model(network):
    from ensai_tf.models import build_model

    if network != "combined":
        return build_model(network)
    from ensai_tf.models import combiner

    nets = [build_model(name) for name in ("overfeat", "ensai_net", "alexnet", "inception_v4")]
    for net in nets:
        net.trainable = False
    return combiner.build_combiner(nets, reference=0)


def time_network(model_path, network, image, batch=100, repeats=3):
    """Seconds per lens at ``batch`` (best of ``repeats``, after one warm-up)."""
    import tensorflow as tf

    from ensai_tf import inference

    if model_path:
        fn, _ = inference.load_predictor(model_path)
        label = model_path
    else:
        model = _untrained_model(network)
        label = f"untrained {network} ({model.count_params() / 1e6:.1f} M parameters)"

        @tf.function(reduce_retracing=True)
        def fn(x):
            return model(x, training=False)

    bands = inference.input_bands(fn) if model_path else 1
    images = np.repeat(image[None, :, :, None].astype(np.float32), batch, axis=0)
    images = np.repeat(images, bands, axis=-1)  # a two-band network gets the image in both
    np.asarray(fn(images))
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        np.asarray(fn(images))
        best = min(best, time.perf_counter() - start)
    return best / batch, label


def time_lenstronomy_fit(image, noise_rms, particles=60, iterations=100):
    """Wall time (s) of a lenstronomy PSO fit (SIE + elliptical Sersic) and its result."""
    from lenstronomy.Workflow.fitting_sequence import FittingSequence

    kwargs_data = _data_kwargs(image, noise_rms)
    kwargs_psf = {"psf_type": "GAUSSIAN", "fwhm": 0.1}
    multi_band = [[kwargs_data, kwargs_psf, {"supersampling_factor": 1}]]
    lens_params = [[{"theta_E": 1.0, "e1": 0.0, "e2": 0.0, "center_x": 0.0, "center_y": 0.0}],
                   [{"theta_E": 0.3, "e1": 0.1, "e2": 0.1, "center_x": 0.1, "center_y": 0.1}],
                   [{}],
                   [{"theta_E": 0.1, "e1": -0.5, "e2": -0.5, "center_x": -0.5, "center_y": -0.5}],
                   [{"theta_E": 3.0, "e1": 0.5, "e2": 0.5, "center_x": 0.5, "center_y": 0.5}]]
    source_params = [[{"R_sersic": 0.2, "n_sersic": 2.0, "e1": 0.0, "e2": 0.0, "center_x": 0.0,
                       "center_y": 0.0}],
                     [{"R_sersic": 0.1, "n_sersic": 0.5, "e1": 0.1, "e2": 0.1, "center_x": 0.1,
                       "center_y": 0.1}],
                     [{}],
                     [{"R_sersic": 0.01, "n_sersic": 0.5, "e1": -0.5, "e2": -0.5,
                       "center_x": -1.0, "center_y": -1.0}],
                     [{"R_sersic": 2.0, "n_sersic": 6.0, "e1": 0.5, "e2": 0.5, "center_x": 1.0,
                       "center_y": 1.0}]]
    fit = FittingSequence({"multi_band_list": multi_band, "multi_band_type": "single-band"},
                          {"lens_model_list": ["SIE"], "source_light_model_list": ["SERSIC_ELLIPSE"]},
                          {}, {"check_bounds": True},
                          {"lens_model": lens_params, "source_model": source_params}, verbose=False)
    start = time.perf_counter()
    fit.fit_sequence([["PSO", {"sigma_scale": 1.0, "n_particles": particles,
                               "n_iterations": iterations}]])
    elapsed = time.perf_counter() - start
    return elapsed, fit.best_fit()["kwargs_lens"][0]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", default=[None],
                        help="trained model folders, each timed in this run (default: untrained)")
    parser.add_argument("--network", default="combined",
                        choices=("combined",) + conventions.NETWORK_NAMES,
                        help="untrained network to time when --model is not given")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--particles", type=int, default=60)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--no-fit", action="store_true", help="time the networks only")
    args = parser.parse_args(argv)
    try:
        image, noise_rms, _ = render_lens()
        have_lenstronomy = True
    except ImportError:
        have_lenstronomy = False
        y, x = conventions.pixel_grid()
        image = np.exp(-0.5 * ((np.hypot(x, y) - 1.2) / 0.08) ** 2)
        noise_rms = None
    times = []
    for model in args.model:
        per_lens, label = time_network(model, args.network, image, args.batch, args.repeats)
        times.append(per_lens)
        print(f"network: {label}")
        print(f"  time per lens at batch {args.batch}: {1e3 * per_lens:.2f} ms "
              f"({1.0 / per_lens:.1f} lenses/s, best of {args.repeats})")
    per_lens = times[0]
    if args.no_fit:
        return 0
    if not have_lenstronomy:
        print("lenstronomy is not installed: no classical fit to compare with")
        return 0
    elapsed, best = time_lenstronomy_fit(image, noise_rms, args.particles, args.iterations)
    truth = _lenstronomy_lens_kwargs(**TRUE_LENS)
    print(f"lenstronomy PSO fit (SIE + elliptical Sersic, {args.particles} particles, "
          f"{args.iterations} iterations): {elapsed:.1f} s")
    print("  theta_E true/fit: {:.3f}/{:.3f}; e1 {:.3f}/{:.3f}; e2 {:.3f}/{:.3f}".format(
        truth["theta_E"], best["theta_E"], truth["e1"], best["e1"], truth["e2"], best["e2"]))
    ratio = elapsed / per_lens
    print(f"ratio fit time / network time per lens: {ratio:.3g} "
          f"(goal >= 1e6: {'met' if ratio >= 1e6 else 'not met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
