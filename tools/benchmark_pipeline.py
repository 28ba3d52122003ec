"""Benchmark the input pipeline (docs/design.md §11 rule 5: measure before optimising).

Measures, on this machine:

1. observed images/s of ``make_dataset("train")`` (online simulation +
   observation, docs/design.md §11 "augmentation throughput"; target >= 500/s);
2. observed images/s with pre-generated arcs (``data.arcs_dir``: observation
   only, docs/design.md §1 steps 1-2);
3. with ``--fit`` and when :mod:`ensai_tf.models` is available: the ratio of
   ``model.fit`` step time on the online pipeline (and, unless
   ``--skip-arcs``, on stored arcs + observe) to step time on cached
   tensors, for AlexNet (target <= 1.05).

Usage::

    python tools/benchmark_pipeline.py --preset paper --batch-size 50 --batches 10
    python tools/benchmark_pipeline.py --fit --fit-steps 5

Timings exclude the first ``--warmup`` batches (tracing). Absolute numbers
vary on a shared machine; compare ratios measured in one run.
"""

import argparse
import dataclasses
import importlib.util
import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _rate(dataset, batches, warmup, batch_size):
    it = iter(dataset)
    for _ in range(warmup):
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    elapsed = time.perf_counter() - start
    return batches * batch_size / elapsed


def _fit_ratios(cfg, batch_size, steps, warmup, arcs_cfg=None):
    """Step time of AlexNet's ``model.fit`` on each pipeline / on cached tensors."""
    import keras
    import numpy as np
    import tensorflow as tf

    from ensai_tf.data import pipeline
    from ensai_tf.models import build_model

    def step_time(dataset):
        model = build_model("alexnet", input_shape=(cfg.image.npix, cfg.image.npix, 1))
        model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="mse")
        model.fit(dataset, steps_per_epoch=warmup, epochs=1, verbose=0, shuffle=False)
        start = time.perf_counter()
        model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
        return (time.perf_counter() - start) / steps

    online = pipeline.make_dataset("train", cfg, batch_size=batch_size)
    x, y = next(iter(online))
    cached = tf.data.Dataset.from_tensors((np.asarray(x), np.asarray(y))).repeat()
    out = {"step_s_cached": step_time(cached), "step_s_online": step_time(online)}
    out["ratio_online"] = out["step_s_online"] / out["step_s_cached"]
    if arcs_cfg is not None:
        out["step_s_arcs"] = step_time(pipeline.make_dataset("train", arcs_cfg,
                                                             batch_size=batch_size))
        out["ratio_arcs"] = out["step_s_arcs"] / out["step_s_cached"]
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper", help="config preset (default: paper)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE", help="config override (repeatable)")
    parser.add_argument("--batch-size", type=int, default=50, help="batch size (default 50)")
    parser.add_argument("--batches", type=int, default=10, help="timed batches (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches (default 2)")
    parser.add_argument("--arcs", type=int, default=200,
                        help="arcs to pre-generate for the observe-only figure (default 200)")
    parser.add_argument("--skip-online", action="store_true", help="skip measurement 1")
    parser.add_argument("--skip-arcs", action="store_true", help="skip measurement 2")
    parser.add_argument("--fit", action="store_true", help="also measure the model.fit ratio")
    parser.add_argument("--fit-steps", type=int, default=5, help="timed fit steps (default 5)")
    args = parser.parse_args(argv)

    from ensai_tf import config as config_lib
    from ensai_tf.data import pipeline

    cfg = config_lib.load_config(preset=args.preset, overrides=args.overrides)
    results = {"preset": args.preset, "batch_size": args.batch_size, "cpus": os.cpu_count()}
    if not args.skip_online:
        ds = pipeline.make_dataset("train", cfg, batch_size=args.batch_size)
        results["online_images_per_s"] = _rate(ds, args.batches, args.warmup, args.batch_size)
        print(f"online simulate+observe: {results['online_images_per_s']:.1f} images/s")
    with tempfile.TemporaryDirectory() as tmp:
        arcs_cfg = None
        if not args.skip_arcs:
            start = time.perf_counter()
            arcs_dir = pipeline.pregenerate_arcs(os.path.join(tmp, "arcs"), args.arcs,
                                                 config=cfg, progress=False)
            results["pregenerate_arcs_per_s"] = args.arcs / (time.perf_counter() - start)
            arcs_cfg = dataclasses.replace(cfg, data=dataclasses.replace(
                cfg.data, arcs_dir=str(arcs_dir)))
            ds = pipeline.make_dataset("train", arcs_cfg, batch_size=args.batch_size)
            results["arcs_observe_images_per_s"] = _rate(ds, args.batches, args.warmup,
                                                         args.batch_size)
            print(f"pre-generation (simulate only): {results['pregenerate_arcs_per_s']:.1f} "
                  "arcs/s")
            print(f"stored arcs + observe: {results['arcs_observe_images_per_s']:.1f} images/s")
        if args.fit:
            if importlib.util.find_spec("ensai_tf.models.alexnet") is None:
                print("ensai_tf.models has no AlexNet yet: skipping the model.fit ratio")
            else:
                fit = _fit_ratios(cfg, args.batch_size, args.fit_steps, args.warmup, arcs_cfg)
                results["fit"] = fit
                print(f"AlexNet fit step: cached tensors {fit['step_s_cached']:.3f} s, online "
                      f"{fit['step_s_online']:.3f} s (ratio {fit['ratio_online']:.2f})")
                if "ratio_arcs" in fit:
                    print(f"AlexNet fit step on stored arcs + observe: {fit['step_s_arcs']:.3f} s "
                          f"(ratio {fit['ratio_arcs']:.2f})")
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
