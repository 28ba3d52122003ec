"""Build an ``ensai_lenses`` config offline without the ``tfds`` command.

``python -m ensai_tf.datasets.ensai_lenses --config observed_small --data_dir DIR``

Equivalent to ``tfds build --config observed_small --data_dir DIR`` in this
folder; useful where the ``tfds`` command cannot start (tfds 4.9.10's CLI
imports apache_beam and mlcroissant unconditionally). ``--train_size N``
builds the config with ``N`` train lenses instead (named ``<config>_N``, see
:func:`~ensai_tf.datasets.ensai_lenses.make_config`). With
``--beam_pipeline_options`` (comma-separated Beam flags, as ``tfds build``
takes them, e.g. ``runner=DirectRunner,direct_num_workers=4``) the examples
are simulated by an Apache Beam pipeline (docs/scaling.md).
"""

import argparse

import tensorflow_datasets as tfds

from ensai_tf.datasets.ensai_lenses import CONFIG_SIZES, Builder, make_config

__all__ = ["beam_download_config", "main"]


def beam_download_config(options):
    """A TFDS download config that builds with Apache Beam.

    Args:
        options: comma-separated Beam pipeline flags without their ``--``, e.g.
            ``"runner=DataflowRunner,project=P,region=R,temp_location=gs://B/tmp"``
            (what ``tfds build --beam_pipeline_options`` takes).

    Returns:
        ``tfds.download.DownloadConfig`` with those ``beam_options``.

    Raises:
        ImportError: Apache Beam is not installed (``pip install "ensai_tf[beam]"``).
    """
    from apache_beam.options.pipeline_options import PipelineOptions  # noqa: PLC0415 (optional dependency)

    flags = [f"--{opt.strip()}" for opt in options.split(",") if opt.strip()]
    return tfds.download.DownloadConfig(beam_options=PipelineOptions(flags=flags))


def main(argv=None):
    """Parse the command line, build the config, print its splits.

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
    parser.add_argument("--train_size", type=int, default=None, metavar="N",
                        help="train lenses (default: the config's); the config is then named "
                             "<config>_N")
    parser.add_argument("--beam_pipeline_options", default=None, metavar="KEY=VALUE,...",
                        help="build with Apache Beam, given these comma-separated pipeline "
                             "flags (e.g. runner=DirectRunner,direct_num_workers=4)")
    args = parser.parse_args(argv)
    if args.train_size is not None and args.train_size < 1:
        parser.error(f"--train_size must be at least 1, got {args.train_size}")
    download_config = None
    if args.beam_pipeline_options is not None:
        try:
            download_config = beam_download_config(args.beam_pipeline_options)
        except ImportError:
            parser.error('--beam_pipeline_options needs Apache Beam: pip install "ensai_tf[beam]"')
    if args.train_size is None:
        builder = tfds.builder(f"ensai_lenses/{args.config}", data_dir=args.data_dir)
    else:
        kind, _, variant = args.config.partition("_")
        config = make_config(kind, variant if variant in CONFIG_SIZES else "paper",
                             train_size=args.train_size)
        builder = Builder(config=config, data_dir=args.data_dir)
    builder.download_and_prepare(download_config=download_config)
    for name, split in builder.info.splits.items():
        print(f"{builder.info.full_name} {name}: {split.num_examples} examples")
    return builder


if __name__ == "__main__":
    main()
