"""What intervals and quality flags cost per lens, against plain prediction, in one run.

Prints a Markdown table, measured on this machine in one run on the same
test lenses (prepared as ``ensai predict`` prepares a user's image):

1. plain prediction: the network's five parameters only
   (:func:`ensai_tf.inference.load_predictor` without the spread head);
2. with intervals: the network and its calibrated standard deviations and
   68% intervals (``with_spread``: for the combined network the spread of
   its members, for a single network its eight flipped and rotated views);
3. with intervals and flags: what ``ensai predict`` computes per row
   (:meth:`ensai_tf.prediction.TablePredictor.rows`: intervals, the image
   statistics, the focus ratio and the screening network).

Each figure is the best of ``--repeats`` passes over the lenses (batch
``--batch``), after one warm-up pass.

Usage:
    python tools/benchmark_trust.py [--model trained_weights/combined] [--n 200]
        [--batch 100] [--repeats 3]
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from ensai_tf import config as config_lib  # noqa: E402
from ensai_tf.evaluate import collect_test_set  # noqa: E402
from ensai_tf.inference import load_predictor  # noqa: E402
from ensai_tf.prediction import load_table_predictor  # noqa: E402
from ensai_tf.preprocess.images import iter_prepared_array  # noqa: E402

__all__ = ["best_time", "main"]


def best_time(run, batches, repeats):
    """Best wall time, seconds, of ``repeats`` calls of ``run`` on every batch (after a warm-up)."""
    for batch in batches[:1]:
        run(batch)
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        for batch in batches:
            run(batch)
        best = min(best, time.perf_counter() - start)
    return best


def main(argv=None):
    """Parse the arguments, time the three ways, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="trained_weights/combined")
    parser.add_argument("--n", type=int, default=200, help="test lenses (default 200)")
    parser.add_argument("--batch", type=int, default=100, help="images per pass (default 100)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes (default 3)")
    args = parser.parse_args(argv)
    images, _, _ = collect_test_set(config_lib.get_preset("paper"), args.n)
    prepared = list(iter_prepared_array(np.asarray(images)[..., 0]))
    batches = [prepared[i:i + args.batch] for i in range(0, len(prepared), args.batch)]
    arrays = [np.stack([p.image for p in b]) for b in batches]
    plain, _ = load_predictor(args.model, with_spread=False)
    spread, _ = load_predictor(args.model, raw=True)
    table = load_table_predictor(args.model)
    pairs = [(i, a) for i, a in enumerate(arrays)]
    seconds = {
        "plain prediction (five parameters)": best_time(lambda p: plain(p[1]), pairs,
                                                        args.repeats),
        "with intervals": best_time(lambda p: spread(p[1]), pairs, args.repeats),
        "with intervals and flags (ensai predict's rows)": best_time(
            lambda p: table.rows(batches[p[0]], subtract="never"), pairs, args.repeats),
    }
    base = seconds["plain prediction (five parameters)"]
    print(f"{args.model}: {len(prepared)} test lenses, batch {args.batch}, best of "
          f"{args.repeats}, one run on this machine\n")
    print("| what | ms per lens | extra over plain |")
    print("|---|---|---|")
    for name, s in seconds.items():
        print(f"| {name} | {1e3 * s / len(prepared):.1f} | "
              f"{1e3 * (s - base) / len(prepared):+.1f} |")


if __name__ == "__main__":
    main()
