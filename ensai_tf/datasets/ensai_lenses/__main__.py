"""Build an ``ensai_lenses`` config offline without the ``tfds`` command.

``python -m ensai_tf.datasets.ensai_lenses --config observed_small --data_dir DIR``

Equivalent to ``tfds build --config observed_small --data_dir DIR`` in this
folder; useful where the ``tfds`` command cannot start (tfds 4.9.10's CLI
imports apache_beam and mlcroissant unconditionally).
"""

import argparse

import tensorflow_datasets as tfds

from ensai_tf.datasets.ensai_lenses import Builder

__all__ = ["main"]


def main(argv=None):
    """Parse ``--config`` and ``--data_dir``, build the config, print its splits.

    Args:
        argv: command-line arguments without the program name; ``None`` reads
            ``sys.argv[1:]``.

    Returns:
        The prepared ``tfds`` builder of ``ensai_lenses/<config>``.
    """
    names = [c.name for c in Builder.BUILDER_CONFIGS]
    parser = argparse.ArgumentParser(prog="python -m ensai_tf.datasets.ensai_lenses",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, choices=names, help="config to build")
    parser.add_argument("--data_dir", default=None,
                        help="TFDS data folder (default: TFDS_DATA_DIR or ~/tensorflow_datasets)")
    args = parser.parse_args(argv)
    builder = tfds.builder(f"ensai_lenses/{args.config}", data_dir=args.data_dir)
    builder.download_and_prepare()
    for name, split in builder.info.splits.items():
        print(f"{builder.info.full_name} {name}: {split.num_examples} examples")
    return builder


if __name__ == "__main__":
    main()
