"""Does reusing a finite store of training arcs limit accuracy? Training against validation loss.

Every training step draws its arcs from a pre-generated store (20,000 to 30,000
noise-free arcs per stage) and gives them fresh observation effects (shift,
PSF, noise, cosmic rays, masks). The validation lenses are arcs the network has
never seen. A network that has started to memorise its arcs has a training
loss clearly below its validation loss; one that has not has the two equal
within the scatter of the validation loss (300 lenses in the ``cpu`` preset:
a few percent from epoch to epoch).

For each run folder this prints, over the last ``--epochs`` epochs of its last
stage in ``log.csv``, the mean training loss, the mean validation loss, their
ratio, and the same ratio of each parameter's rms error. A ratio near 1 means
the arcs are not being memorised; well above 1 means they are.

Usage::

    python tools/arc_reuse.py trained_weights/alexnet trained_weights/overfeat --epochs 5
"""

import argparse
import csv
import math
import pathlib
import sys

PARAMS = ("theta_e", "e_x", "e_y", "x_l", "y_l")


def last_epochs(log_csv, epochs):
    """The rows of the last ``epochs`` epochs of the last stage of a ``log.csv``."""
    with open(log_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{log_csv} has no epochs")
    if "stage" in rows[0]:
        last = rows[-1]["stage"]
        rows = [r for r in rows if r["stage"] == last]
    return rows[-epochs:]


def _number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def reuse_ratios(rows):
    """``{"loss": (train, val, val / train), name: val_rms / rms, ...}`` averaged over ``rows``
    (NaN where a cell is empty or not a number)."""
    def mean(key):
        return sum(_number(r.get(key)) for r in rows) / len(rows)

    train, val = mean("loss"), mean("val_loss")
    out = {"loss": (train, val, val / train)}
    for name in PARAMS:
        if f"{name}_rms" in rows[0] and f"val_{name}_rms" in rows[0]:
            out[name] = mean(f"val_{name}_rms") / mean(f"{name}_rms")
    return out


def _head(run):
    """The model head of a run folder (``model.head`` in its config.yaml; "point" if none)."""
    from ensai_tf.run_dir import run_config  # the package only when a folder is read

    return run_config(run).model.head


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="model or run folders holding a log.csv")
    parser.add_argument("--epochs", type=int, default=5,
                        help="epochs averaged at the end of the last stage (default: 5)")
    args = parser.parse_args()
    if args.epochs < 1:
        sys.exit("arc_reuse: --epochs must be >= 1")
    print("| run | epochs | train loss | val loss | val / train | "
          + " | ".join(f"{p} rms val / train" for p in PARAMS) + " |")
    print("|---" * (5 + len(PARAMS)) + "|")
    for run in args.runs:
        log = pathlib.Path(run) / "log.csv"
        if not log.is_file():
            sys.exit(f"arc_reuse: {run} has no log.csv")
        rows = last_epochs(log, args.epochs)
        if "val_loss" not in rows[0]:
            print(f"| {run} | — | (no validation loss in its log.csv) |")
            continue
        ratios = reuse_ratios(rows)
        train, val, ratio = ratios["loss"]
        if _head(run) != "point":  # a negative log-likelihood: its ratio means nothing
            train = val = ratio = math.nan
        cells = " | ".join(f"{ratios[p]:.2f}" if p in ratios else "—" for p in PARAMS)
        print(f"| {run} | {len(rows)} | {train:.5f} | {val:.5f} | {ratio:.2f} | {cells} |")


if __name__ == "__main__":
    main()
