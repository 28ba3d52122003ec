"""Benchmark the noise-free generator and compare with lenstronomy (docs/design.md §3, §10.2).

Prints a table of:

* noise-free lens images/s of the graph-compiled
  :func:`ensai_tf.data.simulate.simulate_batch` (whole acceptance loop:
  draws, source rendering, placement, ray tracing, redraws) per batch size,
  after a warm-up call;
* images/s of the SAME SIE + elliptical-Sersic image (no PSF, no noise, the
  same supersampling) rendered by our
  :func:`ensai_tf.data.simulate.render_sie_sersic` and by lenstronomy's
  ``ImageModel`` (when lenstronomy is importable), measured in the same run,
  their ratio and their maximum difference relative to the peak;
* peak resident memory of the process (``resource.getrusage``).

Usage::

    python tools/benchmark_simulate.py [--batch-sizes 1 16 64] [--oversample 2]
        [--repeats 3] [--lenstronomy-images 32] [--preset paper]
"""

import argparse
import os
import resource
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from ensai_tf import config as config_lib  # noqa: E402
from ensai_tf import conventions  # noqa: E402
from ensai_tf.data import simulate as sim  # noqa: E402
from ensai_tf.data import sources  # noqa: E402


def _peak_rss_mib():
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _time(fn, repeats):
    """Best wall time of ``repeats`` calls, seconds (after one warm-up call)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench_simulate(cfg, batch_sizes, repeats):
    """images/s of the compiled simulate_batch per batch size, and mean attempts."""
    stamps = sources.load_stamp_library("train", cfg.source.stamp_dirs,
                                        taper_radius=cfg.source.taper_radius)
    fn = tf.function(lambda s: sim.simulate_batch(s, cfg, stamps),
                     input_signature=[tf.TensorSpec([None, 2], tf.int64)])
    rows = []
    for b in batch_sizes:
        seeds = sim.example_seeds(0, "train", 0, b)
        attempts = fn(seeds)["attempts"].numpy()

        def run():
            fn(seeds)["arcs"].numpy()

        seconds = _time(run, repeats)
        rows.append((b, b / seconds, float(attempts.mean())))
    return rows


def _sersic_draws(n, seed=1):
    """The first ``n`` of a fixed pool of lenses and sources (same for any ``n``)."""
    params, source = _sersic_pool(max(int(n), 1024), seed)
    return params[:n], {k: v[:n] for k, v in source.items()}


def _sersic_pool(n, seed):
    rng = np.random.default_rng(seed)
    theta_e = rng.uniform(0.5, 2.0, n)
    eps = rng.uniform(0.0, 0.6, n)
    phi = rng.uniform(0.0, 2 * np.pi, n)
    params = np.stack([theta_e, eps * np.cos(phi), eps * np.sin(phi),
                       rng.uniform(-0.05, 0.05, n), rng.uniform(-0.05, 0.05, n)], axis=1)
    source = {"amplitude": np.ones(n), "n": rng.uniform(1.0, 4.0, n),
              "r_eff": rng.uniform(0.1, 0.3, n), "q": rng.uniform(0.5, 1.0, n),
              "angle": rng.uniform(0.0, np.pi, n), "x0": rng.uniform(-0.1, 0.1, n),
              "y0": rng.uniform(-0.1, 0.1, n)}
    return params.astype(np.float32), {k: v.astype(np.float32) for k, v in source.items()}


def bench_ours(n, npix, oversample, repeats):
    params, source = _sersic_draws(n)
    fn = tf.function(lambda p, s: sim.render_sie_sersic(p, s, npix=npix, oversample=oversample))
    p_t = tf.constant(params)
    s_t = {k: tf.constant(v) for k, v in source.items()}
    images = fn(p_t, s_t).numpy()
    seconds = _time(lambda: fn(p_t, s_t).numpy(), repeats)
    return n / seconds, images


def _lenstronomy_kwargs(p, s):
    """Ensai (theta_E, e_x, e_y, x_L, y_L) and our Sersic -> lenstronomy kwargs (docs/design.md §2.1)."""
    theta_e, e_x, e_y, x_l, y_l = (float(v) for v in p)
    q = 1.0 - np.hypot(e_x, e_y)
    phi = np.arctan2(e_y, e_x)
    # Mass major axis at phi + 90 deg: e1 = -((1-q)/(1+q)) cos 2phi, e2 = -(...) sin 2phi.
    g = (1.0 - q) / (1.0 + q)
    lens = {"theta_E": theta_e, "e1": -g * np.cos(2 * phi), "e2": -g * np.sin(2 * phi),
            "center_x": x_l, "center_y": y_l}
    gs = (1.0 - float(s["q"])) / (1.0 + float(s["q"]))
    src = {"amp": float(s["amplitude"]), "R_sersic": float(s["r_eff"]),
           "n_sersic": float(s["n"]), "e1": gs * np.cos(2 * float(s["angle"])),
           "e2": gs * np.sin(2 * float(s["angle"])), "center_x": float(s["x0"]),
           "center_y": float(s["y0"])}
    return [lens], [src]


def bench_lenstronomy(n, npix, oversample, repeats):
    from lenstronomy.Data.imaging_data import ImageData
    from lenstronomy.Data.psf import PSF
    from lenstronomy.ImSim.image_model import ImageModel
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LightModel.light_model import LightModel
    from lenstronomy.Util import simulation_util

    # inverse=False: x = +column, y = +row, pixel centres (j - (n-1)/2) * 0.04 (docs/design.md §0).
    kwargs_data = simulation_util.data_configure_simple(num_pix=npix,
                                                        delta_pix=conventions.PIXEL_SCALE,
                                                        inverse=False)
    model = ImageModel(ImageData(**kwargs_data), PSF(psf_type="NONE"),
                       lens_model_class=LensModel(["SIE"]),
                       source_model_class=LightModel(["SERSIC_ELLIPSE"]),
                       kwargs_numerics={"supersampling_factor": int(oversample)})
    params, source = _sersic_draws(n)
    kwargs = [_lenstronomy_kwargs(params[i], {k: v[i] for k, v in source.items()})
              for i in range(n)]

    def run():
        return [model.image(kwargs_lens=kl, kwargs_source=ks) for kl, ks in kwargs]

    # lenstronomy returns flux per pixel; ours is surface brightness (per arcsec^2).
    images = np.stack(run()) / conventions.PIXEL_SCALE**2
    seconds = _time(run, repeats)
    return n / seconds, images


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--oversample", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--preset", default="paper", choices=sorted(config_lib.PRESETS))
    parser.add_argument("--sersic-batch", type=int, default=64,
                        help="images per call of our SIE + Sersic renderer")
    parser.add_argument("--lenstronomy-images", type=int, default=32,
                        help="images rendered by lenstronomy per timing (0 = skip)")
    args = parser.parse_args(argv)

    cfg = config_lib.get_preset(args.preset)
    cfg = config_lib.validate_config(config_lib.apply_overrides(
        cfg, [f"simulate.oversample={args.oversample}"]))
    npix = cfg.image.npix
    print(f"device: {'GPU' if tf.config.list_physical_devices('GPU') else 'CPU'}, "
          f"{os.cpu_count()} cores; image {npix}^2, oversample {args.oversample}, "
          f"preset {args.preset}")

    print("\nnoise-free lenses (simulate_batch, tf.function, incl. redraws)")
    print(f"{'batch':>6} {'images/s':>10} {'mean attempts':>14}")
    for b, rate, attempts in bench_simulate(cfg, args.batch_sizes, args.repeats):
        print(f"{b:>6d} {rate:>10.1f} {attempts:>14.2f}")

    print(f"\nSIE + elliptical Sersic, {npix}^2, supersampling {args.oversample}, no PSF/noise")
    ours, ours_images = bench_ours(args.sersic_batch, npix, args.oversample, args.repeats)
    print(f"{'ensai_tf (batch ' + str(args.sersic_batch) + ')':<28} {ours:>10.1f} images/s")
    if args.lenstronomy_images > 0:
        try:
            import lenstronomy  # noqa: F401
        except ImportError:
            print("lenstronomy not importable: comparison skipped")
        else:
            theirs, their_images = bench_lenstronomy(args.lenstronomy_images, npix,
                                                     args.oversample, args.repeats)
            m = min(len(their_images), len(ours_images))
            diff = np.abs(ours_images[:m] - their_images[:m]).max(axis=(1, 2))
            rel = float(np.max(diff / their_images[:m].max(axis=(1, 2))))
            print(f"{'lenstronomy (per image)':<28} {theirs:>10.1f} images/s")
            print(f"{'ratio ensai_tf / lenstronomy':<28} {ours / theirs:>10.1f}x")
            print(f"max |ours - lenstronomy| / peak over {m} images: {rel:.2e}")
    print(f"\npeak RSS: {_peak_rss_mib():.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
