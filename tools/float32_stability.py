"""How much the shipped models' check metrics depend on the CPU kernels.

Usage::

    python tools/float32_stability.py [--n 200]

Predicts the first ``--n`` fixed test lenses with every shipped point-estimate
model twice, in two fresh processes that use different float32 kernels
(oneDNN on with batches of 50; oneDNN off, ``TF_ENABLE_ONEDNN_OPTS=0``, with
batches of 7), and prints the largest prediction difference and the largest
relative change of a 68% error. ``tests/test_trained_weights.py`` sets its
``CHECK_RTOL`` far above these figures.
"""

import argparse
import os
import subprocess
import sys
import tempfile

NAMES = ("alexnet", "ensai_net", "overfeat", "inception_v4", "combined")


def _predict(out, n, batch):
    import numpy as np

    from ensai_tf import config, evaluate, inference, model_dir

    images, params, _ = evaluate.collect_test_set(config.get_preset("paper"), n)
    preds = {}
    for name in NAMES:
        fn, _ = inference.load_predictor(model_dir.shipped_weights_dir() / name)
        preds[name] = inference.predict_images(fn, images, batch)
    np.savez(out, true=params, **preds)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="test lenses (default 200)")
    parser.add_argument("--worker", nargs=2, metavar=("OUT", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _predict(args.worker[0], args.n, int(args.worker[1]))
        return

    import numpy as np

    from ensai_tf import metrics
    from ensai_tf.conventions import PARAM_NAMES

    with tempfile.TemporaryDirectory() as tmp:
        runs = {"oneDNN, batch 50": ("1", "50"), "no oneDNN, batch 7": ("0", "7")}
        results = []
        for label, (onednn, batch) in runs.items():
            out = os.path.join(tmp, f"{onednn}.npz")
            env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=onednn, TF_CPP_MIN_LOG_LEVEL="2")
            subprocess.run([sys.executable, __file__, "--n", str(args.n), "--worker", out, batch],
                           env=env, check=True)
            results.append(dict(np.load(out)))
    a, b = results
    print(f"{'model':14s} {'max |d pred|':>14s} {'max rel d error68':>18s}")
    for name in NAMES:
        ma = metrics.error_table(a["true"], a[name])
        mb = metrics.error_table(b["true"], b[name])
        rel = max(abs(ma[p]["error68"] / mb[p]["error68"] - 1) for p in PARAM_NAMES)
        print(f"{name:14s} {np.abs(a[name] - b[name]).max():14.2e} {rel:18.2e}")


if __name__ == "__main__":
    main()
