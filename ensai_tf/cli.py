"""The ``ensai`` command: parses arguments and calls library functions.

Subcommands: ``simulate``, ``train``, ``combine``, ``calibrate``, ``evaluate``,
``predict``, ``export`` and ``demo``. No logic lives here, so notebooks and tests call the same
library functions. Errors meant for the user (:class:`ensai_tf.errors.EnsaiError`,
configuration errors, unreadable files) are printed as one line naming the
problem, with exit status 2; ``--debug`` shows the traceback instead.

Each command imports its workflow module when it runs, so ``ensai --help``
and a mistyped option do not wait for the data pipeline, astropy or the
training code to load.
"""

import argparse
import importlib
import math
import os
import signal
import sys

from ensai_tf import config as config_lib
from ensai_tf.conventions import NETWORK_NAMES
from ensai_tf.errors import EnsaiError, InputError

__all__ = ["main", "build_parser"]


def _number(kind, lo, hi, unit=""):
    """An argparse type: a finite ``kind`` (int or float) in ``[lo, hi]``, or a one-line error."""
    def parse(text):
        try:
            value = kind(text)
        except (TypeError, ValueError, OverflowError):
            raise argparse.ArgumentTypeError(
                f"{text[:80]!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not math.isfinite(value) or not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{text[:80]!r} is out of range: give a value from "
                                             f"{lo:g} to {hi:g}{unit}")
        return value
    parse.__name__ = kind.__name__
    return parse


COUNT = _number(int, 1, 10**6)
"""Lens counts (``-n``): 1 to a million."""


def _refuse_existing(path, what, overwrite):
    """Refuse to replace an existing file unless ``--overwrite`` was given."""
    if path and path != "-" and os.path.lexists(path) and not os.path.isdir(path) \
            and not overwrite:  # a folder gets its own message from the writer
        raise InputError(f"{what} {path!r} already exists; choose a new file name or pass "
                         "--overwrite to replace it")


def _add_config_args(parser, default_preset="paper"):
    parser.add_argument("--preset", default=default_preset,
                        help=f"named preset to start from (default: {default_preset})")
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of overrides")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE",
                        help="override one config value (repeatable), e.g. train.learning_rate=3e-4")


def _resolve_config(args):
    return config_lib.load_config(args.config, preset=args.preset, overrides=args.overrides)


def _workflow(name):
    """The workflow module ``ensai_tf.<name>``, imported when its command runs."""
    return importlib.import_module(f"ensai_tf.{name}")


def _cmd_simulate(args):
    _workflow("data.writer").write_observed_dataset(
        args.out, n=args.n, seed=args.seed, config=_resolve_config(args), split=args.split,
        overwrite=args.overwrite, clean=args.clean, curves=args.curves, progress=not args.quiet)


def _cmd_train(args):
    cfg = _resolve_config(args)
    if args.model:
        cfg = config_lib.apply_overrides(cfg, [f"model.name={args.model}"])
    strategy = args.strategy
    if args.distribute is not None:
        print("ensai train: warning: --distribute is deprecated; use --strategy", file=sys.stderr)
        if strategy not in (None, args.distribute):
            raise InputError(f"--strategy {strategy} and --distribute {args.distribute} disagree; "
                             "give --strategy only")
        strategy = args.distribute
    _workflow("train").train(cfg, args.model_dir, resume=args.resume, overwrite=args.overwrite,
                             strategy=strategy)


def _cmd_combine(args):
    _workflow("combine").train_combiner(args.models, args.model_dir, config=_resolve_config(args),
                         mode=args.mode, steps=args.steps, overwrite=args.overwrite)


def _cmd_calibrate(args):
    config = None  # the model's own config.yaml
    if args.preset or args.config or args.overrides:
        config = config_lib.load_config(args.config, preset=args.preset or "paper",
                                        overrides=args.overrides)
    _workflow("calibrate").calibrate(args.model_dir, config=config, n=args.n, experiment=args.experiment)


def _cmd_evaluate(args):
    evaluate = _workflow("evaluate")
    if args.symmetrize and (len(args.model) > 1 or args.experiment in ("ica", "lens-light")):
        raise InputError("--symmetrize evaluates one model on the test set; it is not available "
                         f"with several models or --experiment {args.experiment}")
    if (args.lens_light_model or args.two_band_model) and args.experiment != "lens-light":
        raise InputError("--lens-light-model/--two-band-model go with --experiment lens-light")
    if len(args.model) > 1:
        if args.experiment != "shear" or not args.out:
            raise InputError("several models are compared only with --experiment shear and an "
                             "--out folder (ensai evaluate A B --experiment shear --out DIR)")
        evaluate.compare_shear(args.model, args.out, n=args.n, config=_resolve_config(args),
                               overwrite=args.overwrite)
        return
    model = args.model[0]
    if args.experiment == "ica":
        _workflow("lens_light_report").evaluate_ica(model, n=args.n, out_dir=args.out,
                                                    config=_resolve_config(args))
        return
    if args.experiment == "lens-light":
        _workflow("lens_light_report").evaluate_lens_light(
            model, n=args.n, out_dir=args.out, config=_resolve_config(args), overwrite=args.overwrite,
            lens_light_model=args.lens_light_model, two_band_model=args.two_band_model)
        return
    if args.experiment == "trust":
        _workflow("trust").evaluate_trust(model, n=args.n, out_dir=args.out,
                                          config=_resolve_config(args), overwrite=args.overwrite)
        return
    evaluate.evaluate(model, n=args.n, experiment=args.experiment, out_dir=args.out,
                      config=_resolve_config(args), symmetrize=args.symmetrize,
                      trust_savedmodel=args.trust_savedmodel, overwrite=args.overwrite)


# ensai_tf.realdata.lens_light's LENS_LIGHT_PATHS and SINGLE_BAND_MODES, spelled here to keep
# `ensai --help` fast (tests/realdata/test_lens_light_paths.py checks that they agree)
LENS_LIGHT_PATHS = ("subtract", "ica", "subtract+ica")
SINGLE_BAND_MODES = ("auto", "always", "never")


def _cmd_predict_catalog(args):
    given = [flag for flag, value in (
        ("image files", args.files), ("--bands", args.bands), ("--ica", args.ica),
        ("--ra", args.ra), ("--dec", args.dec), ("--x", args.x), ("--y", args.y),
        ("--mask", args.mask), ("--mask-sky", args.mask_sky), ("--plot", args.plot))
        if value not in (None, False, [])]
    if given:
        raise InputError(f"--catalog takes the images, positions and second bands from its "
                         f"columns; drop {', '.join(given)}")
    catalog = _workflow("catalog")
    catalog.predict_catalog(
        args.model, args.catalog, args.output, shard=catalog.parse_shard(args.shard or "0/1"),
        resume=args.resume, overwrite=args.overwrite, batch_size=args.batch_size,
        pixel_scale=args.pixel_scale, hdu=args.hdu, psf_fwhm=args.psf_fwhm,
        cosmic_rays=args.cosmic_rays, symmetrize=args.symmetrize,
        trust_savedmodel=args.trust_savedmodel, lens_light=args.lens_light,
        subtract_lens_light=args.subtract_lens_light or "auto")


def _cmd_predict(args):
    if args.catalog is not None:
        _cmd_predict_catalog(args)
        return
    if args.resume or args.shard is not None:
        raise InputError("--resume and --shard work with --catalog FILE.csv")
    _refuse_existing(args.output, "output", args.overwrite)
    _refuse_existing(args.plot, "plot", args.overwrite)
    realdata = _workflow("realdata")
    pair = realdata.band_files(args.bands, args.files, args.ica)
    path, mode = realdata.lens_light_request(pair is not None, args.lens_light,
                                             args.subtract_lens_light, args.ica)
    if pair is None:
        _workflow("prediction").predict_files(
            args.model, args.files, output=args.output, pixel_scale=args.pixel_scale,
            batch_size=args.batch_size, return_rows=False, symmetrize=args.symmetrize,
            trust_savedmodel=args.trust_savedmodel, subtract_lens_light=mode,
            position=None if args.x is None and args.y is None else (args.x, args.y),
            sky=None if args.ra is None and args.dec is None else (args.ra, args.dec))
        return
    if args.symmetrize:
        raise InputError("--symmetrize is not available with two-band input (--bands/--ica)")
    if args.x is None and args.y is None and args.ra is None and args.dec is None:
        print("ensai predict: warning: no --x/--y or --ra/--dec given; the lens is assumed at "
              "the centre of the image", file=sys.stderr)
    realdata.predict_two_band(
        args.model, pair[0], pair[1], output=args.output, ra=args.ra, dec=args.dec, x=args.x,
        y=args.y, masks=args.mask, sky_masks=args.mask_sky, psf_fwhm=args.psf_fwhm,
        cosmic_rays=args.cosmic_rays, hdu=args.hdu, pixel_scale=args.pixel_scale,
        plot=args.plot, lens_light=path if args.lens_light or args.ica else None)


def _cmd_export(args):
    out = _workflow("export").export_model(args.model, args.out, export_format=args.format,
                                           overwrite=args.overwrite,
                                           trust_savedmodel=args.trust_savedmodel)
    print(f"ensai export: wrote {args.format} to {out}", file=sys.stderr)


def _cmd_demo(args):
    _workflow("demo").run_demo(weights_dir=args.weights, n=args.n, out_dir=args.out)


def _add_trust_arg(parser):
    parser.add_argument("--trust-savedmodel", action="store_true",
                        help="load a folder's saved_model/ even where model.keras or "
                             "combiner.json is beside it (a SavedModel is a program: it runs "
                             "code its author wrote; trust only your own)")


def _add_simulate(sub):
    """The ``ensai simulate`` subcommand."""
    p = sub.add_parser("simulate", help="write simulated observed lenses, a parameter table "
                                        "and a PNG contact sheet to a folder")
    p.add_argument("--out", required=True, help="output folder (must be new or empty)")
    p.add_argument("-n", "--n", type=COUNT, default=64,
                   help="number of lenses, 1 to 10^6 (default: 64)")
    p.add_argument("--seed", type=int, default=0, help="user seed (default: 0)")
    p.add_argument("--split", default="test", choices=("train", "validation", "test"),
                   help="which source pool and seed stream (default: test)")
    p.add_argument("--clean", action="store_true", help="noise-free arcs only (no observation)")
    p.add_argument("--curves", action="store_true",
                   help="overlay critical curve and caustic on the contact sheet")
    p.add_argument("--overwrite", action="store_true", help="allow a non-empty output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_config_args(p, default_preset="paper")
    p.set_defaults(func=_cmd_simulate)


def _add_train(sub):
    """The ``ensai train`` subcommand."""
    p = sub.add_parser("train", help="train one network with model.fit on the online pipeline")
    p.add_argument("--model", choices=NETWORK_NAMES,
                   help="architecture (default: the config's model.name)")
    p.add_argument("--model-dir", required=True, help="folder for config, checkpoints, logs")
    p.add_argument("--resume", action="store_true", help="continue a run in an existing folder")
    p.add_argument("--overwrite", action="store_true", help="start afresh in an existing folder")
    # the names of ensai_tf.distribute.STRATEGIES, spelled here so that `ensai --help` does not
    # load the training code (tests/test_multiworker.py checks that they agree)
    strategies = ("mirrored", "multi-worker")
    p.add_argument("--strategy", choices=strategies, default=None,
                   help="mirrored: all GPUs of this machine; multi-worker: one process per "
                        "machine, the cluster in the TF_CONFIG environment variable, only the "
                        "chief writing --model-dir (docs/scaling.md); the global batch stays "
                        "train.batch_size (default: one device)")
    p.add_argument("--distribute", choices=strategies, default=None,
                   help="deprecated name of --strategy")
    _add_config_args(p, default_preset="cpu")
    p.set_defaults(func=_cmd_train)


def _add_combine(sub):
    """The ``ensai combine`` subcommand."""
    p = sub.add_parser("combine", help="train the frozen-backbone combiner of trained networks")
    p.add_argument("--models", nargs="+", required=True, metavar="DIR",
                   help="trained model folders; the first is the parity reference; a "
                        "Gaussian-head or shear network joins through its five means")
    p.add_argument("--model-dir", required=True, help="output folder")
    p.add_argument("--mode", default="per_parameter", choices=("per_parameter", "dense"),
                   help="5 weights per member, one per parameter (paper), or a full Dense layer")
    p.add_argument("--steps", type=_number(int, 1, 10**7), default=None,
                   help="batches of fresh lenses to fit over (default: train.combine_steps)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    _add_config_args(p, default_preset="cpu")
    p.set_defaults(func=_cmd_combine)


def _add_calibrate(sub):
    """The ``ensai calibrate`` subcommand."""
    p = sub.add_parser("calibrate", help="fit a model's per-lens intervals on validation lenses "
                                         "(a Gaussian head, or the spread of a point-estimate "
                                         "or combined network)")
    p.add_argument("model_dir", help="model folder written by 'ensai train' or 'ensai combine'")
    p.add_argument("--n", type=COUNT, default=None,
                   help="validation lenses, 1 to 10^6 (default: config)")
    p.add_argument("--experiment", default=None, choices=config_lib.EXPERIMENTS,
                   help="validation lenses of a robustness experiment (docs/design.md §8.5)")
    _add_config_args(p, default_preset=None)
    p.set_defaults(func=_cmd_calibrate)


def _add_evaluate(sub):
    """The ``ensai evaluate`` subcommand."""
    p = sub.add_parser("evaluate", help="Table 1 and Figure 1 on the fixed test set")
    p.add_argument("model", nargs="+",
                   help="model folder, SavedModel folder or .keras file; several with "
                        "--experiment shear --out DIR compare them in bins of shear")
    p.add_argument("--n", type=COUNT, default=None,
                   help="test lenses, 1 to 10^6 (default: config)")
    p.add_argument("--experiment", default=None, choices=(*config_lib.EXPERIMENTS, "ica", "trust"),
                   help="robustness experiment (docs/design.md §8.5); ica: arc recovery and error "
                        "growth of two-band ICA lens-light removal (docs/design.md §8.4); lens-light: "
                        "the errors of ICA, fitted lens-light subtraction and a lens-light network "
                        "on two-band lenses against colour ratio and lens brightness; trust: "
                        "interval coverage on shifted sets, quality-flag rates and detection rates")
    for flag, what in (("--lens-light-model", "a one-band network trained with lens light"),
                       ("--two-band-model", "a network trained on both bands")):
        p.add_argument(flag, default=None, metavar="FOLDER", help=f"--experiment lens-light: {what}")
    p.add_argument("--out", default=None,
                   help="output folder, never the model's own (default: "
                        "./ensai_eval/<model name>[-EXP][-d4])")
    p.add_argument("--overwrite", action="store_true",
                   help="write into an existing non-empty output folder")
    p.add_argument("--symmetrize", action="store_true",
                   help="average each prediction over the 8 flips and rotations of the image "
                        "(point-estimate models; 8x the time per lens)")
    _add_trust_arg(p)
    _add_config_args(p, default_preset="paper")
    p.set_defaults(func=_cmd_evaluate)


def _add_predict(sub):
    """The ``ensai predict`` subcommand."""
    p = sub.add_parser("predict", help="predict lens parameters for .npy or FITS images, or "
                                       "for a catalogue of cutouts (--catalog)")
    p.add_argument("model", help="model folder, SavedModel folder or .keras file")
    p.add_argument("files", nargs="*", help=".npy or .fits images")
    p.add_argument("--output", "--out", default="-",
                   help="CSV or JSON file (by extension; with --catalog CSV or JSON lines, "
                        ".jsonl); '-' = CSV on stdout")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --output (or --plot) file")
    c = p.add_argument_group(
        "survey catalogues (ensai_tf.catalog)",
        "--catalog FILE.csv: a header and one row per lens; columns path (.npy or FITS, relative "
        "to the catalogue's folder), optional ra,dec (degrees, needs a WCS) or x,y (0-based "
        "pixels) for the lens position, optional band2 (a redder FITS band: the two-band path "
        "of --bands). Rows are appended to --output and flushed batch by batch. An unreadable "
        "image does not stop the run: it is reported on stderr and in OUTPUT.errors.csv, and "
        "skipped; a bad catalogue (column, number) stops it before any work. --pixel-scale, "
        "--hdu, --psf-fwhm, --cosmic-rays, --lens-light (band2 rows) and --subtract-lens-light "
        "(single-band rows) apply to every row.")
    c.add_argument("--catalog", metavar="FILE.csv", default=None,
                   help="predict every lens of this catalogue")
    c.add_argument("--shard", metavar="I/N", default=None,
                   help="only the rows with catalog_row %% N == I (0 <= I < N), for job "
                        "arrays: the N outputs together hold the unsharded rows (to the bit "
                        "with the same --batch-size); give each its own --output")
    c.add_argument("--resume", action="store_true",
                   help="keep the rows already in --output (dropping an incomplete last line "
                        "of a killed run) and predict the rest; a missing output is started")
    p.add_argument("--pixel-scale", type=_number(float, 1e-4, 10.0, " arcsec"), default=None,
                   metavar="ARCSEC",
                   help="pixel scale of images without a WCS, 1e-4 to 10 arcsec")
    p.add_argument("--batch-size", type=_number(int, 1, 4096), default=100,
                   help="images per forward pass, 1 to 4096 (default: 100)")
    p.add_argument("--symmetrize", action="store_true",
                   help="average each prediction over the 8 flips and rotations of the image "
                        "(point-estimate models; 8x the time per lens)")
    p.add_argument("--subtract-lens-light", choices=SINGLE_BAND_MODES, default=None,
                   help="single-band images: auto (default) fits and subtracts the lens light of "
                        "an image that raises the lens_light flag and predicts the residual; "
                        "always; never (column lens_light_path: subtract or none)")
    g = p.add_argument_group("two bands: lens-light removal (docs/design.md §8.4)")
    g.add_argument("--bands", nargs=2, metavar=("BLUE.fits", "RED.fits"),
                   help="two aligned filters, bluer first: remove the lens light and predict")
    g.add_argument("--lens-light", choices=LENS_LIGHT_PATHS, default=None,
                   help="subtract (default, the most accurate measured): a smooth lens-light "
                        "model fitted to each band and subtracted; ica: FastICA of the bands (the "
                        "paper's; needs arcs clearly bluer than the lens); or subtract+ica")
    g.add_argument("--ica", action="store_true",
                   help="the two positional files are BLUE RED, unmixed by --lens-light ica")
    g.add_argument("--ra", type=_number(float, 0.0, 360.0, " degrees"),
                   help="lens RA, 0 to 360 degrees (ICRS; needs a WCS)")
    g.add_argument("--dec", type=_number(float, -90.0, 90.0, " degrees"),
                   help="lens Dec, -90 to 90 degrees (ICRS)")
    g.add_argument("--x", type=_number(float, -1e6, 1e6, " pixels"),
                   help="lens column in the blue file (or the one image file), 0-based pixels")
    g.add_argument("--y", type=_number(float, -1e6, 1e6, " pixels"),
                   help="lens row in the blue file (or the one image file), 0-based pixels")
    g.add_argument("--mask", action="append", default=[], metavar="X,Y|FILE.reg",
                   help="0.2 arcsec mask at a blue-file pixel, or a DS9 region file "
                        "(circles, points); repeatable")
    g.add_argument("--mask-sky", action="append", default=[], metavar="RA,DEC",
                   help="0.2 arcsec mask at a sky position, degrees; repeatable")
    g.add_argument("--psf-fwhm", nargs=2, type=_number(float, 1e-3, 5.0, " arcsec"),
                   metavar=("BLUE", "RED"),
                   help="PSF FWHM of each band, 0.001 to 5 arcsec: Gaussian matching to the "
                        "broader")
    g.add_argument("--cosmic-rays", choices=("auto", "lacosmic", "laplacian"), default=None,
                   help="mask detected cosmic rays (auto: astroscrappy if installed)")
    g.add_argument("--hdu", default=None,
                   help="HDU index or EXTNAME to read (default: the first image)")
    g.add_argument("--plot", default=None, metavar="FILE.png",
                   help="diagnostic PNG: bands, fitted lens light and residual or ICA components, "
                        "masks, critical curve")
    _add_trust_arg(p)
    p.set_defaults(func=_cmd_predict)


def _add_export(sub):
    """The ``ensai export`` subcommand."""
    p = sub.add_parser("export", help="export a model folder (the combined one included) as a "
                                      "SavedModel for TensorFlow Serving or TFSMLayer, or as "
                                      "one .keras file")
    p.add_argument("model", help="model folder or .keras file")
    p.add_argument("out", help="output folder (must be new or empty)")
    p.add_argument("--format", default="savedmodel", choices=("savedmodel", "keras"),
                   help="savedmodel: OUT/saved_model.pb with a 'serve' endpoint (default); "
                        "keras: OUT/model.keras")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export in OUT")
    _add_trust_arg(p)
    p.set_defaults(func=_cmd_export)


def _add_demo(sub):
    """The ``ensai demo`` subcommand."""
    p = sub.add_parser("demo", help="predict simulated test lenses with the shipped weights")
    p.add_argument("--weights", default=None, help="weights folder (default: trained_weights/)")
    p.add_argument("--n", type=_number(int, 1, 10**5), default=100,
                   help="number of lenses, 1 to 10^5 (default: 100)")
    p.add_argument("--out", default="ensai_demo", help="folder for the figure and table")
    p.set_defaults(func=_cmd_demo)


def build_parser():
    """The argparse parser of the ``ensai`` command."""
    parser = argparse.ArgumentParser(
        prog="ensai",
        description="Fast strong-lens parameter estimation with convolutional networks "
                    "(Hezaveh, Perreault Levasseur & Marshall 2017).")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_add_simulate, _add_train, _add_combine, _add_calibrate, _add_evaluate,
                _add_predict, _add_export, _add_demo):
        add(sub)
    return parser


def main(argv=None):
    """Entry point of the ``ensai`` console script; returns the exit status.

    Args:
        argv: command-line arguments without the program name; ``None`` reads
            ``sys.argv[1:]``.

    Returns:
        int: 0 on success, 2 for a reported error (an ``EnsaiError``, a file
        or disk error, or running out of memory; re-raised instead with
        ``--debug``), 130 when interrupted (SIGINT), 143 when terminated
        (SIGTERM). Interrupted or terminated, the command removes its
        temporary files as it unwinds.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    previous = _catch_sigterm()
    try:
        args.func(args)
    except _Terminated:
        print("ensai: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("ensai: interrupted", file=sys.stderr)
        return 130
    except (EnsaiError, OSError, MemoryError) as err:
        if args.debug:
            raise
        print(f"ensai {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


class _Terminated(KeyboardInterrupt):
    """Raised by the SIGTERM handler, so cleanup runs as for Ctrl-C."""


def _on_sigterm(signum, frame):
    raise _Terminated()


def _catch_sigterm():
    """Handle SIGTERM like SIGINT (main thread only); returns the previous handler or None."""
    try:
        return signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: leave signals alone
        return None


def _one_line(err):
    """One line for an error: an OSError names its path, a MemoryError the allocation."""
    if isinstance(err, MemoryError):
        detail = " ".join(str(err).split())[:200]
        return f"out of memory{': ' + detail if detail else ''}; use smaller inputs or settings"
    if isinstance(err, OSError) and not isinstance(err, EnsaiError):
        where = " -> ".join(repr(str(f)) for f in (err.filename, err.filename2) if f)
        reason = err.strerror or " ".join(str(err).split()) or type(err).__name__
        return f"{where + ': ' if where else ''}{reason}"
    return " ".join(str(err).split())


if __name__ == "__main__":
    sys.exit(main())
