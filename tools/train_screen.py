"""Train the screening network behind the quality flags and write its folder.

    python tools/train_screen.py OUT_DIR [--epochs N] [--scale 1.0] [--stem bin|conv]
                                 [--cache DIR] [--overwrite]

Writes ``OUT_DIR/model.keras`` and ``OUT_DIR/screen.json`` (thresholds fitted on
clean validation lenses, detection rates on validation-split sets) and prints
the detection rates; ``trained_weights/screen`` was made with the defaults
(docs/design.md §8.7): 18,600 training images (2.7 GB in memory, about 18
minutes to simulate on one core) and 60 epochs (about 90 minutes on one core).
"""

import argparse
import json

from ensai_tf.models.screen import STEMS
from ensai_tf.train_screen import EPOCHS, SCREEN_SIZES, STEM, train_screen


def main(argv=None):
    """Parse the arguments, train, print the screen.json summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="folder for model.keras and screen.json")
    parser.add_argument("--epochs", type=int, default=EPOCHS,
                        help=f"passes over the training images (default {EPOCHS})")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply every training-set size by this (default 1)")
    parser.add_argument("--check-n", type=int, default=1000,
                        help="validation lenses for thresholds and detection rates (default 1000)")
    parser.add_argument("--stem", choices=STEMS, default=STEM,
                        help=f"the network's first halving (default {STEM})")
    parser.add_argument("--cache", default=None,
                        help="folder keeping the generated images, to train other recipes on them")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing network")
    args = parser.parse_args(argv)
    sizes = {k: max(1, int(round(v * args.scale))) for k, v in SCREEN_SIZES.items()}
    info = train_screen(args.out_dir, sizes=sizes, epochs=args.epochs, check_n=args.check_n,
                        overwrite=args.overwrite, cache=args.cache, stem=args.stem)
    print(json.dumps({k: info[k] for k in ("thresholds", "clean_flag_rate",
                                           "detection_validation", "train_seconds")}, indent=1))


if __name__ == "__main__":
    main()
