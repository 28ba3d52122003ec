"""Interval coverage of the four shipped networks used as a deep ensemble.

The mean and spread of the four independently trained point-estimate networks
(:func:`ensai_tf.uncertainty.ensemble_predict`, parity-aligned) give a
per-lens error bar with no new training. The spread is recalibrated by
quantile recalibration fitted on the fixed validation set, then the fraction
of the fixed test set's truths inside the 68% and 95% intervals is printed,
raw and calibrated, with the 68% errors of the ensemble mean.

Usage::

    python tools/ensemble_coverage.py [--weights trained_weights] [--n 10000]
"""

import argparse
import pathlib

import numpy as np

NETWORKS = ("alexnet", "ensai_net", "overfeat", "inception_v4")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=pathlib.Path,
                        default=pathlib.Path(__file__).resolve().parent.parent / "trained_weights")
    parser.add_argument("--n", type=int, default=10000, help="test lenses")
    args = parser.parse_args(argv)

    from ensai_tf import calibration, config, evaluate, inference, metrics, reports, uncertainty
    from ensai_tf.conventions import PARAM_NAMES
    from ensai_tf.data import pipeline

    cfg = config.get_preset("paper")
    val = pipeline.make_dataset("validation", cfg, batch_size=100)
    val_images, val_true = (np.concatenate(a) for a in zip(*[(x.numpy(), y.numpy())
                                                             for x, y in val]))
    test_images, test_true, _ = evaluate.collect_test_set(cfg, args.n)
    members_val, members_test = [], []
    for name in NETWORKS:
        fn, _ = inference.load_predictor(args.weights / name)
        members_val.append(inference.predict_images(fn, val_images, 100))
        members_test.append(inference.predict_images(fn, test_images, 100))
        print(f"predicted with {name}", flush=True)
    val_mean, val_std = uncertainty.ensemble_predict(members_val)
    mean, std = uncertainty.ensemble_predict(members_test)
    val_std, std = np.maximum(val_std, 1e-6), np.maximum(std, 1e-6)
    cal = calibration.fit_interval_calibration(val_true, val_mean, val_std)
    report = reports.coverage_report(test_true, mean, std, cal)
    errors = metrics.error_table(test_true, mean)
    print(f"\nfour-network deep ensemble on {args.n} test lenses; calibration fitted on "
          f"{len(val_true)} validation lenses\n")
    print("| | " + " | ".join(PARAM_NAMES) + " |")
    print("|---" * (len(PARAM_NAMES) + 1) + "|")
    print("| 68% error of the mean | "
          + " | ".join(f"{errors[p]['error68']:.3f}" for p in PARAM_NAMES) + " |")
    for kind in ("raw", "calibrated"):
        for level, row in report[kind].items():
            print(f"| {kind} coverage, nominal {float(level):.0%} | "
                  + " | ".join(f"{row[p]:.1%}" for p in PARAM_NAMES) + " |")


if __name__ == "__main__":
    main()
