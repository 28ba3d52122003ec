"""Choose between checkpoints on many fixed validation lenses, never on the test set.

A training run selects its best epoch on ``data.val_size`` validation lenses
(300 in the ``cpu`` preset), whose loss scatters by several percent from epoch
to epoch. Before a retrained network replaces a shipped one, this
script scores both on the first ``--n`` lenses of the fixed validation split
of the ``paper`` preset (simulated like the test set, docs/design.md §8.3, but disjoint
from it) and prints, per model, the mean parity-min MSE (the training loss,
docs/design.md §7.1) and the 68% error of every parameter, with the relative change of
each model against the first.

Usage::

    python tools/compare_on_validation.py trained_weights/alexnet runs/alexnet --n 2000

``--best`` prints only the model with the lowest parity MSE, for scripts
(``tools/train_shipped_weights.sh`` keeps a stage only when it is that model).
``--set KEY=VALUE`` (repeatable) changes the validation lenses as it does for
``ensai evaluate``, for networks trained on other images; for the lens-light
networks::

    python tools/compare_on_validation.py trained_weights/alexnet_lens_light RUN \
        --set simulate.lens_light=true --set observe.peak_normalise=true \
        --set "simulate.lens_light_amplitude=[1.0,10.0]"
"""

import argparse
import dataclasses

import numpy as np


def score(model, images, true, batch_size):
    """Mean parity-min MSE and the error table of one model on the given lenses."""
    from ensai_tf import inference, metrics

    fn, _ = inference.load_predictor(model)
    pred = inference.predict_images(fn, images, batch_size)
    corrected = metrics.parity_correct_np(true, pred)
    loss = float(np.mean(np.square(corrected - true)))
    return loss, metrics.error_table(true, pred)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+",
                        help="model folders or .keras files; changes are relative to the first")
    parser.add_argument("--n", type=int, default=2000,
                        help="validation lenses (default: 2000)")
    parser.add_argument("--best", action="store_true",
                        help="print only the model with the lowest parity MSE")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting of the validation lenses (repeatable)")
    args = parser.parse_args()

    from ensai_tf import config as config_lib, evaluate
    from ensai_tf.conventions import PARAM_NAMES

    try:
        cfg = config_lib.apply_overrides(config_lib.get_preset("paper"), args.set)
    except config_lib.ConfigError as err:
        raise SystemExit(f"compare_on_validation: {err}") from None
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, val_size=max(
        args.n, cfg.data.val_size)))
    images, true, _ = evaluate.collect_fixed_split(cfg, args.n, "validation")
    rows = [(m, *score(m, images, true, cfg.evaluate.batch_size)) for m in args.models]
    if args.best:
        print(min(rows, key=lambda row: row[1])[0])
        return
    settings = "".join(f", {s}" for s in args.set)
    print(f"{args.n} validation lenses (paper preset{settings}, seed {cfg.data.seed}); "
          "68% errors, arcsec for theta_E, x, y")
    print("| model | parity MSE | " + " | ".join(PARAM_NAMES) + " |")
    print("|---|---|" + "---|" * len(PARAM_NAMES))
    base_loss, base_table = rows[0][1], rows[0][2]
    for model, loss, table in rows:
        cells = [f"{loss:.5f} ({loss / base_loss - 1:+.1%})"]
        for name in PARAM_NAMES:
            v, b = table[name]["error68"], base_table[name]["error68"]
            cells.append(f"{v:.4f} ({v / b - 1:+.1%})")
        print(f"| {model} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
