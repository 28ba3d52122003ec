"""Accuracy and cost of a combined network averaged over 1, 2, 4 or 8 views of each image.

A combined network can average each backbone over flips and rotations of the
image (``train.combine_views``, docs/design.md §7.4, §8.6). This script measures
what each choice buys, in one run on this machine: every backbone of a combined
folder predicts the first ``--n`` lenses of the fixed test set through each of
the eight views (mapped back to the image's frame), and for each set of views the
backbones are averaged over those views, aligned in parity and combined with the
folder's own combination weights, as the network with that ``combine_views``
computes. It prints, per set of views, the 68% error of each parameter, its
change against one view, and the time per lens (the backbones' measured times at
batch 100 times the number of views).

Usage::

    python tools/view_study.py trained_weights/combined --n 2000
"""

import argparse
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

VIEW_CHOICES = (("1", (0,)), ("2: and its transpose", (0, 4)), ("2: and the half-turn", (0, 3)),
                ("4: the rotations", (0, 3, 5, 6)), ("4: the flips", (0, 1, 2, 3)),
                ("8: all", tuple(range(8))))
"""Label and indices into ``ensai_tf.symmetry.DIHEDRAL_GROUP`` of each set of views."""


def backbone_views(backbones, images, batch=100):
    """``(M, 8, N, 5)`` predictions mapped back to the image frame, and ``(M,)`` ms per lens and view."""
    from ensai_tf import symmetry

    preds, times = [], []
    for model in backbones:
        model.predict_on_batch(images[:batch])  # trace once, untimed
        views, seconds = [], 0.0
        for g in symmetry.DIHEDRAL_GROUP:
            out = []
            for i in range(0, len(images), batch):
                turned = symmetry.transform_images(images[i:i + batch], g)
                start = time.perf_counter()
                out.append(np.asarray(model.predict_on_batch(turned), np.float64))
                seconds += time.perf_counter() - start
            views.append(symmetry.transform_params(np.concatenate(out), g, inverse=True))
        preds.append(views)
        times.append(1e3 * seconds / (8 * len(images)))
    return np.asarray(preds), np.asarray(times)


def combine(preds, weights, reference, views):
    """The per-parameter combination of the backbones averaged over ``views`` (indices)."""
    from keras import ops

    from ensai_tf.losses import parity_correct

    def align(ref, p):
        return ops.convert_to_numpy(parity_correct(ref, p))

    averaged = [np.mean([v[views[0]]] + [align(v[views[0]], v[k]) for k in views[1:]], axis=0)
                for v in preds]
    ref = averaged[reference]
    aligned = np.stack([align(ref, a) for a in averaged], axis=1)  # (N, M, 5)
    return np.einsum("nmk,mk->nk", aligned, np.asarray(weights, np.float64))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a combined model folder (with combiner.json)")
    parser.add_argument("--n", type=int, default=2000, help="test lenses (default: 2000)")
    args = parser.parse_args()
    from ensai_tf import config as config_lib
    from ensai_tf.conventions import PARAM_NAMES
    from ensai_tf.evaluate import collect_test_set
    from ensai_tf.metrics import error_table
    from ensai_tf.models import combiner, stored_combiner

    folder = pathlib.Path(args.model)
    try:
        record = json.loads((folder / "combiner.json").read_text())
    except (OSError, ValueError) as err:
        sys.exit(f"view_study: {folder} has no readable combiner.json ({err})")
    if record.get("mode") != "per_parameter":
        sys.exit("view_study: only per-parameter combinations are supported")
    backbones = combiner.load_backbones(stored_combiner.backbone_files(folder, record))
    images, true, _ = collect_test_set(config_lib.get_preset("paper"), args.n)
    preds, ms = backbone_views(backbones, images)
    print(f"{folder}: {len(backbones)} backbones, {args.n} test lenses; ms per lens and view: "
          + ", ".join(f"{b.name} {t:.2f}" for b, t in zip(backbones, ms)))
    print("| views | ms per lens | " + " | ".join(PARAM_NAMES) + " | change against one view |")
    print("|---" * (len(PARAM_NAMES) + 3) + "|")
    base = None
    for label, views in VIEW_CHOICES:
        pred = combine(preds, record["weights"][0], record["reference"], views)
        table = error_table(true, pred)
        errors = np.array([table[p]["error68"] for p in PARAM_NAMES])
        base = errors if base is None else base
        change = " / ".join(f"{100 * (e / b - 1):+.0f}%" for e, b in zip(errors, base))
        print(f"| {label} | {ms.sum() * len(views):.1f} | "
              + " | ".join(f"{e:.4f}" for e in errors) + f" | {change} |", flush=True)


if __name__ == "__main__":
    main()
