"""The catalogue of hostile inputs and faults that ``tools/stress.py --cases`` runs.

Each :class:`Case` is one ``ensai`` command line run in a subprocess against
the files of :func:`stress_fixtures.build_fixtures`: broken and hostile FITS
and ``.npy`` images, model folders, ``combiner.json`` records, configs,
``--set`` values and YAML files, two-band options, output paths on read-only
and full file systems, kill -9 and resume, concurrent runs and signals.

Every result is put in exactly one class (:func:`classify`), in this order:

- ``hang``: still running at the case's time limit (it is then killed);
- ``crash``: ended by a signal it did not handle (SIGBUS, SIGSEGV, ...);
- ``hostile code``: a planted payload wrote its marker file;
- ``lost``: a file the user had (hashed before the run) was changed or removed;
- ``traceback``: a Python traceback on stdout or stderr;
- ``clean``: exit status 2 and a last stderr line ``ensai ...: error: ...``,
  for a case that must be refused (or may be refused);
- ``accepted``: exit status 0 for a case that is valid (or may be);
- ``other``: anything else (a bad input accepted, a valid one refused, a
  temporary file left behind, a wrong exit status).
"""

import dataclasses
import hashlib
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import stress_fixtures as fx

__all__ = ["Case", "CLASSES", "catalogue", "run_case", "classify", "hash_paths"]

CLASSES = ("clean", "accepted", "traceback", "lost", "hostile code", "hang", "crash", "other")
ROOT = fx.ROOT
CLEAN_LINE = re.compile(r"^ensai( [\w-]+)?: error: \S")
TRAIN = ("--preset", "smoke", "--model", "ensai_net", "--set", "image.npix=48", "--set",
         "model.width=0.25", "--set", "train.image_summaries=0", "--set",
         "train.steps_per_epoch=2")


@dataclasses.dataclass
class Case:
    """One command line and what must hold after it.

    Attributes:
        name: unique short name (``group/what``).
        argv: arguments of ``ensai`` (strings; ``{work}`` etc. are filled in
            from the fixture paths).
        expect: ``"clean"`` (must be refused), ``"ok"`` (must succeed),
            ``"either"`` (both are right) or ``"signal"`` (interrupted: exit
            130 or 143, or 0 when it finished first).
        protect: paths whose bytes must be unchanged afterwards.
        timeout: seconds before the case counts as a hang.
        prepare: callable(ctx) run before the protected files are hashed.
        check: callable(ctx) -> list of problems, run afterwards.
        interrupt: ``(signal, seconds)``: send it after that long.
        env: extra environment variables.
    """

    name: str
    argv: tuple
    expect: str = "clean"
    protect: tuple = ()
    timeout: float = 180.0
    prepare: object = None
    check: object = None
    interrupt: tuple = None
    env: dict = None


def hash_paths(paths):
    """``{path: sha256}`` of every file under ``paths`` (missing files map to None)."""
    out = {}
    for p in map(pathlib.Path, paths):
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        if p.is_dir():
            out[str(p) + "/"] = "dir"
        for f in files:
            try:
                out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest() if f.is_file() else None
            except OSError:
                out[str(f)] = None
    return out


def _fill(arg, ctx):
    return arg.format(**{k: str(v) for k, v in ctx.items()}) if isinstance(arg, str) else str(arg)


def _temp_left(*folders):
    """A check: no ``.ensai-tmp-`` entry or ``.tmp-`` cache folder left in these folders."""
    def check(ctx):
        left = []
        for folder in folders:
            folder = pathlib.Path(_fill(folder, ctx))
            if folder.is_dir():
                left += [p.name for p in folder.iterdir()
                         if p.name.startswith(".ensai-tmp-") or ".tmp-" in p.name]
        return [f"left behind: {', '.join(sorted(left))}"] if left else []
    return check


def _write(path, text="user data\n"):
    def prepare(ctx):
        p = pathlib.Path(_fill(path, ctx))
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return prepare


def _steps(*fns):
    def run(ctx):
        for fn in fns:
            fn(ctx)
    return run


def _simulated(path, extra=()):
    """prepare: a folder written by ``ensai simulate`` (2 lenses), plus ``extra`` user files."""
    def prepare(ctx):
        out = pathlib.Path(_fill(path, ctx))
        subprocess.run([sys.executable, "-m", "ensai_tf.cli", "simulate", "--out", str(out),
                        "-n", "2", "--quiet"], cwd=ctx["work"], env=_env(), check=True,
                       capture_output=True)
        for name in extra:
            (out / name).write_text("user data\n")
    return prepare


def _locked(path):
    """prepare: a live process holds the lock of ``path`` for ten minutes."""
    def prepare(ctx):
        folder = _fill(path, ctx)
        code = ("import sys, time; from ensai_tf.dirlock import ModelDirLock; "
                f"lock = ModelDirLock({folder!r}, 'stress holder').acquire(); "
                "print('held', flush=True); time.sleep(600)")
        proc = subprocess.Popen([sys.executable, "-c", code], env=_env(), stdout=subprocess.PIPE,
                                text=True)
        proc.stdout.readline()
        ctx.setdefault("holders", []).append(proc)
    return prepare


def _env(**extra):
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path, **extra)


def _predict(*args, model="{model}", **kw):
    return ("predict", model, *args), kw


def _images_cases():
    """Single-image FITS and .npy inputs to ``ensai predict``."""
    ok = ["good.fits", "good.fits.fz", "good.fits.gz", "scaled_int16.fits", "int64.fits",
          "good.npy", "fortran.npy", "bigendian.npy", "int64.npy", "uint8.npy", "batch.npy",
          "float16.npy"]
    clean = ["empty.fits", "text.fits", "truncated.fits", "header_only.fits", "one_d.fits",
             "nan.fits", "cdelt_zero.fits", "cdelt_nan.fits", "table.fits", "claims_huge.fits",
             "zero_axis.fits", "folder.fits", "fifo.fits", "devzero.fits", "corrupt.fits.gz",
             "missing.fits", "empty.npy", "garbage.npy", "truncated.npy", "claims_huge.npy",
             "claims_1e10.npy", "negative_shape.npy", "strings.npy", "structured.npy",
             "objects.npy", "pickled.npy", "zero_size.npy", "nan.npy", "one_d.npy",
             "five_d.npy", "complex.npy", "archive.npy", "devzero.npy", "missing.npy"]
    either = ["appended.fits", "cube.fits", "inf.fits", "zeros.fits", "tiny.fits",
              "huge_values.fits", "nowcs.fits", "wcs36.fits", "flipped.fits", "nonsquare.fits",
              "small.npy", "one_pixel.npy", "part_nan.npy", "inf.npy", "huge_values.npy",
              "bool.npy", "strip.npy"]
    cases = []
    for expect, names in (("ok", ok), ("clean", clean), ("either", either)):
        for name in names:
            cases.append(Case(f"image/{name}", ("predict", "{model}", f"{{img}}/{name}"),
                              expect, protect=(f"{{img}}/{name}",) if "fifo" not in name
                              and "devzero" not in name and "folder" not in name else (),
                              timeout=120))
    for value, expect in (("0", "clean"), ("-1", "clean"), ("nan", "clean"), ("inf", "clean"),
                          ("1e308", "clean"), ("1e-308", "clean"), ("0.04", "ok"),
                          ("0.1", "ok")):
        cases.append(Case(f"image/pixel_scale_{value}",
                          ("predict", "{model}", "{img}/nowcs.fits", "--pixel-scale", value),
                          expect))
    cases.append(Case("image/good_and_bad", ("predict", "{model}", "{img}/good.npy",
                                             "{img}/garbage.npy"), "clean"))
    return cases


def _model_cases():
    """Model folders and files: missing, corrupt and hostile."""
    m = "{models}"
    clean = ["missing", "empty", "text.keras", "garbage", "truncated", "noconfig", "dir_model",
             "devzero", "fifo.keras", "lambda.keras", "os_system.keras", "three_outputs.keras",
             "sm_garbage", "sm_empty_pb"]
    cases = [Case(f"model/{name}", ("predict", f"{m}/{name}", "{img}/good.npy"), "clean",
                  timeout=120) for name in clean]
    cases += [
        Case("model/hostile_savedmodel_beside_keras",
             ("predict", f"{m}/hostile_beside_keras", "{img}/good.npy"), "ok"),
        Case("model/hostile_savedmodel_beside_combiner",
             ("predict", f"{m}/hostile_beside_combiner", "{img}/good.npy"), "either"),
        Case("model/export_hostile_beside_keras",
             ("export", f"{m}/hostile_beside_keras", "{out}/export_hostile"), "ok", timeout=300),
        Case("model/export_lambda", ("export", f"{m}/lambda.keras", "{out}/export_lambda"),
             "clean"),
        Case("model/evaluate_lambda", ("evaluate", f"{m}/lambda.keras", "--n", "2", "--out",
                                       "{out}/eval_lambda", "--set", "data.cache_dir={work}/cache"),
             "clean", timeout=300),
    ]
    return cases


def _combiner_cases():
    """combiner.json records."""
    c = "{comb}"
    clean = ["absolute_outside", "traversal", "lambda_outside", "symlinked", "bad_json",
             "json_list", "missing_keys", "sha_mismatch", "missing_backbone", "wrong_weights",
             "million_backbones", "deep_json", "bad_reference", "bad_mode", "dir_backbone",
             "devzero", "sha_types", "backbones_not_list"]
    cases = [Case(f"combiner/{name}", ("predict", f"{c}/{name}", "{img}/good.npy"), "clean",
                  protect=(f"{c}/{name}/combiner.json",), timeout=240) for name in clean]
    cases += [
        Case("combiner/nan_weights", ("predict", f"{c}/nan_weights", "{img}/good.npy"), "either",
             timeout=240),
        Case("combiner/local_backbones", ("predict", f"{c}/local", "{img}/good.npy"), "ok",
             timeout=240),
        Case("combiner/outside_trusted", ("predict", f"{c}/absolute_outside", "{img}/good.npy",
                                          "--trust-savedmodel"), "ok", timeout=240),
        Case("combiner/shipped", ("predict", str(fx.SHIPPED / "combined"), "{img}/good.npy"),
             "ok", timeout=240),
    ]
    return cases


def _sim(name, *args, expect="clean", **kw):
    return Case(f"config/{name}", ("simulate", "--out", f"{{out}}/sim_{name}", "-n", "1",
                                   "--quiet", *args), expect, timeout=kw.pop("timeout", 120), **kw)


def _config_cases():
    """--set values, YAML files and presets, through ``ensai simulate`` and ``ensai train``."""
    sets = {
        "batch_1e23": "train.batch_size=1e23", "batch_nan": "train.batch_size=nan",
        "batch_neg": "train.batch_size=-1", "batch_zero": "train.batch_size=0",
        "batch_frac": "train.batch_size=1.5", "batch_bool": "train.batch_size=true",
        "lr_inf": "train.learning_rate=inf", "lr_neg": "train.learning_rate=-1",
        "lr_1e400": "train.learning_rate=1e400", "npix_zero": "image.npix=0",
        "npix_1e400": "image.npix=1e400", "npix_huge": "image.npix=100000",
        "scale_zero": "image.pixel_scale=0", "scale_nan": "image.pixel_scale=nan",
        "theta_reversed": "lens.theta_e=[2, 1]", "theta_nan": "lens.theta_e=[nan, 1]",
        "theta_scalar": "lens.theta_e=notalist", "no_equals": "train.batch_size",
        "unknown_key": "nosuch.key=1", "section_only": "train=1", "three_parts": "a.b.c=1",
        "bad_yaml": "train.learning_rate=[1", "long_value": "train.batch_size=" + "9" * 100000,
        "long_key": "x" * 100000 + ".y=1", "psf_missing": "observe.psf_file=/nonexistent.fits",
        "stamps_missing": "source.stamp_dirs=[/nonexistent]", "epochs_1e9": "train.epochs=1e9",
        "python_tag": "train.batch_size=!!python/object/apply:os.system ['touch x']",
        "newline": "train.batch_size=1\n2",
    }
    cases = [_sim(name, "--set", value) for name, value in sets.items()]
    cases.append(_sim("epochs_1e9", "--set", "train.epochs=1e9", expect="either"))
    cases = [c for c in cases if not (c.name == "config/epochs_1e9" and c.expect == "clean")]
    yamls = {"int_1e400": "clean", "float_1e400": "clean", "bigint": "clean",
             "python_tag": "clean", "top_list": "clean", "binary": "clean",
             "unknown_section": "clean", "section_scalar": "clean", "newline_key": "clean",
             "deep": "clean", "alias_bomb": "clean", "alias_bomb_key": "clean",
             "folder": "clean", "missing": "clean", "empty": "ok"}
    cases += [_sim(f"yaml_{name}", "--config", f"{{cfg}}/{name}.yaml", expect=expect, timeout=60)
              for name, expect in yamls.items()]
    cases += [_sim("preset_unknown", "--preset", "nosuch"), _sim("valid", expect="ok"),
              Case("config/train_batch_1e23", ("train", *TRAIN, "--model-dir", "{out}/train_cfg",
                                               "--set", "train.batch_size=1e23"), "clean"),
              Case("config/train_yaml_1e400", ("train", *TRAIN, "--model-dir", "{out}/train_cfg2",
                                               "--config", "{cfg}/int_1e400.yaml"), "clean")]
    return cases


def _number_cases():
    """Numeric command-line options out of range or not finite."""
    cases = []
    for value in ("0", "-5", "1000000000000", "nan"):
        cases.append(Case(f"number/simulate_n_{value}", ("simulate", "--out",
                                                         f"{{out}}/n_{value}", "-n", value)))
    for value in ("0", "-1", "1000000000000"):
        cases.append(Case(f"number/batch_size_{value}", ("predict", "{model}", "{img}/good.npy",
                                                         "--batch-size", value)))
    for value in ("0", "-1", "1000000000000"):
        cases.append(Case(f"number/combine_steps_{value}", (
            "combine", "--models", "{model}", "--model-dir", f"{{out}}/steps_{value}",
            "--steps", value)))
    for value in ("0", "-1", "1000000000000"):
        cases.append(Case(f"number/evaluate_n_{value}", ("evaluate", "{model}", "--n", value,
                                                         "--out", f"{{out}}/ev_n_{value}")))
        cases.append(Case(f"number/demo_n_{value}", ("demo", "--n", value, "--out",
                                                     f"{{out}}/demo_n_{value}")))
    cases.append(Case("number/calibrate_n_0", ("calibrate", "{model}", "--n", "0")))
    cases.append(Case("number/seed_2e80", ("simulate", "--out", "{out}/seed_big", "-n", "1",
                                           "--seed", str(2 ** 80)), "either"))
    cases.append(Case("number/seed_negative", ("simulate", "--out", "{out}/seed_neg", "-n", "1",
                                               "--seed", "-1"), "either"))
    return cases


def _band(name, *args, expect="clean", blue="blue", red="red", **kw):
    return Case(f"twoband/{name}", ("predict", "{model}", "--bands", f"{{bands}}/{blue}.fits",
                                    f"{{bands}}/{red}.fits", *args), expect,
                timeout=kw.pop("timeout", 180), **kw)


def _two_band_cases():
    """Options of two-band ICA lens-light removal."""
    at = ("--x", "128", "--y", "128")
    cases = [
        _band("valid_xy", *at, expect="ok"),
        _band("valid_radec", "--ra", "150", "--dec", "2", expect="ok"),
        _band("psf_valid", *at, "--psf-fwhm", "0.1", "0.2", expect="ok"),
        _band("mask_valid", *at, "--mask", "10,10", expect="ok"),
        _band("plot_valid", *at, "--plot", "{out}/plot_valid.png", expect="ok"),
    ]
    bad = {
        "dec_200": ("--ra", "150", "--dec", "200"), "ra_400": ("--ra", "400", "--dec", "2"),
        "ra_nan": ("--ra", "nan", "--dec", "2"), "dec_inf": ("--ra", "150", "--dec", "inf"),
        "radec_outside": ("--ra", "10", "--dec", "-40"), "ra_only": ("--ra", "150"),
        "x_huge_negative": ("--x", "-1e308", "--y", "128"), "x_nan": ("--x", "nan", "--y", "128"),
        "x_outside": ("--x", "10000", "--y", "128"), "y_inf": ("--x", "128", "--y", "inf"),
        "xy_and_radec": (*at, "--ra", "150", "--dec", "2"),
        "mask_nan": (*at, "--mask", "nan,nan"), "mask_inf": (*at, "--mask", "inf,1"),
        "mask_one_number": (*at, "--mask", "1"), "mask_words": (*at, "--mask", "a,b"),
        "mask_huge": (*at, "--mask", "1e308,1e308"),
        "mask_missing_reg": (*at, "--mask", "{bands}/missing.reg"),
        "mask_garbage_reg": (*at, "--mask", "{bands}/garbage.reg"),
        "mask_nan_reg": (*at, "--mask", "{bands}/nan_circle.reg"),
        "mask_sky_far": (*at, "--mask-sky", "1000,1000"), "mask_sky_nan": (*at, "--mask-sky",
                                                                           "nan,0"),
        "psf_inf": (*at, "--psf-fwhm", "0.1", "inf"), "psf_1e5": (*at, "--psf-fwhm", "0.1", "1e5"),
        "psf_negative": (*at, "--psf-fwhm", "-1", "1"), "psf_nan": (*at, "--psf-fwhm", "nan", "1"),
        "psf_above_cap": (*at, "--psf-fwhm", "0.1", "6"), "psf_zero": (*at, "--psf-fwhm", "0",
                                                                       "0"),
        "hdu_99": (*at, "--hdu", "99"), "hdu_name": (*at, "--hdu", "NOSUCH"),
        "hdu_negative": (*at, "--hdu", "-1"), "symmetrize": (*at, "--symmetrize"),
        "plot_missing_dir": (*at, "--plot", "{out}/no/such/dir/p.png"),
        "pixel_scale_nan": (*at, "--pixel-scale", "nan"),
    }
    cases += [_band(name, *args) for name, args in bad.items()]
    cases += [
        _band("mask_huge_circle", *at, "--mask", "{bands}/huge_circle.reg", expect="either"),
        _band("mask_many_points", *at, "--mask", "{bands}/many.reg", expect="either"),
        _band("same_file_twice", *at, red="blue", expect="either"),
        _band("different_shapes", *at, red="red_small", expect="either"),
        _band("missing_band", *at, red="missing"),
        _band("nan_band", *at, red="nan"),
        _band("tiny_band", "--x", "0", "--y", "0", blue="tiny", red="tiny"),
        _band("radec_without_wcs", "--ra", "150", "--dec", "2", blue="blue_nowcs",
              red="red_nowcs"),
        _band("plot_existing", *at, "--plot", "{out}/plot_existing.png",
              prepare=_write("{out}/plot_existing.png"), protect=("{out}/plot_existing.png",)),
        Case("twoband/ica_three_files", ("predict", "{model}", "--ica", "{bands}/blue.fits",
                                         "{bands}/red.fits", "{bands}/red.fits")),
        _band("cosmic_rays", *at, "--cosmic-rays", "laplacian", expect="either"),
    ]
    return cases


def _output_cases():
    """Output paths: existing files, folders, read-only and full file systems."""
    g = "{img}/good.npy"
    ev = ("--n", "2", "--set", "data.cache_dir={work}/cache")
    return [
        Case("output/predict_existing", ("predict", "{model}", g, "--output", "{out}/have.csv"),
             prepare=_write("{out}/have.csv"), protect=("{out}/have.csv",)),
        Case("output/predict_existing_overwrite", ("predict", "{model}", g, "--output",
                                                   "{out}/have2.csv", "--overwrite"), "ok",
             prepare=_write("{out}/have2.csv")),
        Case("output/predict_new", ("predict", "{model}", g, "--output", "{out}/new.json"), "ok",
             check=_temp_left("{out}")),
        Case("output/predict_missing_folder", ("predict", "{model}", g, "--output",
                                               "{out}/no/such/out.csv")),
        Case("output/predict_folder", ("predict", "{model}", g, "--output", "{out}")),
        Case("output/predict_txt", ("predict", "{model}", g, "--output", "{out}/o.txt"),
             "either"),
        Case("output/predict_dev_full", ("predict", "{model}", g, "--output", "/dev/full",
                                         "--overwrite")),
        Case("output/predict_readonly", ("predict", "{model}", g, "--output", "{ro}/o.csv")),
        Case("output/predict_disk_full", ("predict", "{model}", g, "--output", "{full}/o.csv"),
             check=_temp_left("{full}")),
        Case("output/predict_onto_input", ("predict", "{model}", g, "--output", g),
             protect=(g,)),
        Case("output/predict_onto_model", ("predict", "{model}", g, "--output",
                                           "{model}/model.keras"), protect=("{model}",)),
        Case("output/simulate_onto_file", ("simulate", "--out", "{out}/have3.csv", "-n", "1"),
             prepare=_write("{out}/have3.csv"), protect=("{out}/have3.csv",)),
        Case("output/simulate_foreign", ("simulate", "--out", "{out}/foreign", "-n", "1"),
             prepare=_write("{out}/foreign/notes.txt"), protect=("{out}/foreign/notes.txt",)),
        Case("output/simulate_foreign_overwrite", ("simulate", "--out", "{out}/foreign2", "-n",
                                                   "1", "--overwrite"),
             prepare=_write("{out}/foreign2/notes.txt"), protect=("{out}/foreign2/notes.txt",)),
        Case("output/simulate_own_overwrite", ("simulate", "--out", "{out}/own", "-n", "1",
                                               "--quiet", "--overwrite"), "ok",
             prepare=_simulated("{out}/own"), timeout=240),
        Case("output/simulate_own_plus_foreign_overwrite", (
            "simulate", "--out", "{out}/own2", "-n", "1", "--quiet", "--overwrite"), "either",
             prepare=_simulated("{out}/own2", extra=("notes.txt",)),
             protect=("{out}/own2/notes.txt",), timeout=240),
        Case("output/simulate_onto_model", ("simulate", "--out", "{model}", "-n", "1",
                                            "--overwrite"), protect=("{model}",)),
        Case("output/simulate_readonly", ("simulate", "--out", "{ro}/sim", "-n", "1")),
        Case("output/simulate_disk_full", ("simulate", "--out", "{small}/sim", "-n", "64",
                                           "--quiet"), check=_temp_left("{small}"), timeout=300),
        Case("output/simulate_disk_filled", ("simulate", "--out", "{full}/sim", "-n", "1",
                                             "--quiet"), check=_temp_left("{full}")),
        Case("output/demo_onto_file", ("demo", "--n", "2", "--out", "{out}/have4.txt"),
             prepare=_write("{out}/have4.txt"), protect=("{out}/have4.txt",)),
        Case("output/demo_readonly", ("demo", "--n", "2", "--out", "{ro}/demo")),
        Case("output/evaluate_into_model", ("evaluate", "{models}/ev_model", *ev, "--out",
                                            "{models}/ev_model"),
             prepare=lambda ctx: _copy_model(ctx, "ev_model"), protect=("{models}/ev_model",),
             timeout=300),
        Case("output/evaluate_readonly", ("evaluate", "{model}", *ev, "--out", "{ro}/ev"),
             timeout=300),
        Case("output/export_readonly", ("export", "{model}", "{ro}/exp")),
        Case("output/export_nonempty", ("export", "{model}", "{out}/exp_have"),
             prepare=_write("{out}/exp_have/notes.txt"), protect=("{out}/exp_have",)),
        Case("output/export_into_model", ("export", "{model}", "{model}"),
             protect=("{model}",)),
        Case("output/export_keras_into_model", ("export", "{model}", "{model}", "--format",
                                                "keras", "--overwrite"),
             protect=("{model}",), expect="either"),
    ]


def _copy_model(ctx, name):
    dest = pathlib.Path(ctx["models"]) / name
    if not dest.exists():
        shutil.copytree(ctx["model"], dest)


def _run_cases():
    """Signals, kill -9 and resume, locks and concurrent runs."""
    many = ("predict", "{model}", *[f"{{img}}/good.npy"] * 400, "--output")
    return [
        Case("signal/predict_sigterm", (*many, "{out}/sigterm/o.csv"), "signal",
             prepare=lambda ctx: pathlib.Path(ctx["out"], "sigterm").mkdir(exist_ok=True),
             interrupt=(signal.SIGTERM, 12.0), check=_temp_left("{out}/sigterm")),
        Case("signal/predict_sigint", (*many, "{out}/sigint/o.csv"), "signal",
             prepare=lambda ctx: pathlib.Path(ctx["out"], "sigint").mkdir(exist_ok=True),
             interrupt=(signal.SIGINT, 12.0), check=_temp_left("{out}/sigint")),
        Case("signal/simulate_sigterm", ("simulate", "--out", "{out}/simterm/s", "-n", "3000",
                                         "--quiet"), "signal",
             prepare=lambda ctx: pathlib.Path(ctx["out"], "simterm").mkdir(exist_ok=True),
             interrupt=(signal.SIGTERM, 15.0), check=_temp_left("{out}/simterm")),
        Case("signal/simulate_sigint", ("simulate", "--out", "{out}/simint/s", "-n", "3000",
                                        "--quiet"), "signal",
             prepare=lambda ctx: pathlib.Path(ctx["out"], "simint").mkdir(exist_ok=True),
             interrupt=(signal.SIGINT, 15.0), check=_temp_left("{out}/simint")),
        Case("signal/train_sigterm", ("train", *TRAIN, "--model-dir", "{out}/trainterm"),
             "signal", interrupt=(signal.SIGTERM, 25.0), check=_temp_left("{out}/trainterm"),
             timeout=300),
        Case("kill/simulate_again_after_kill9", ("simulate", "--out", "{out}/simkill/s", "-n",
                                                 "2", "--quiet"), "ok",
             prepare=_killed(("simulate", "--out", "{out}/simkill/s", "-n", "3000", "--quiet"),
                             12.0), timeout=300),
        # enough epochs that the kill lands mid-run on a fast machine too
        Case("kill/train_resume_after_kill9", ("train", *TRAIN, "--model-dir", "{out}/trainkill",
                                               "--set", "train.epochs=12", "--resume"), "ok",
             prepare=_killed(("train", *TRAIN, "--model-dir", "{out}/trainkill", "--set",
                              "train.epochs=12"), 30.0), timeout=500),
        Case("lock/train_locked", ("train", *TRAIN, "--model-dir", "{out}/locked_train"),
             prepare=_locked("{out}/locked_train")),
        Case("lock/simulate_overwrite_locked", ("simulate", "--out", "{out}/locked_sim", "-n",
                                                "1", "--overwrite"),
             prepare=_steps(_write("{out}/locked_sim/config.yaml", "train: {}\n"),
                            _locked("{out}/locked_sim")),
             protect=("{out}/locked_sim/config.yaml",)),
        Case("lock/combine_locked", ("combine", "--models", "{model}", "--model-dir",
                                     "{out}/locked_comb"), prepare=_locked("{out}/locked_comb")),
        Case("lock/export_locked", ("export", "{model}", "{out}/locked_exp"), "either",
             prepare=_locked("{out}/locked_exp")),
    ]


def _killed(argv, after_s):
    """prepare: run ``ensai argv`` and kill it with SIGKILL after ``after_s`` seconds."""
    def prepare(ctx):
        args = [_fill(a, ctx) for a in argv]
        pathlib.Path(args[args.index("--out") + 1] if "--out" in args else
                     args[args.index("--model-dir") + 1]).parent.mkdir(parents=True,
                                                                     exist_ok=True)
        proc = subprocess.Popen([sys.executable, "-m", "ensai_tf.cli", *args], cwd=ctx["work"],
                                env=_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            proc.wait(after_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return prepare


def catalogue():
    """Every case, in a stable order."""
    cases = (_images_cases() + _model_cases() + _combiner_cases() + _config_cases()
             + _number_cases() + _two_band_cases() + _output_cases() + _run_cases())
    names = [c.name for c in cases]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"duplicate case names: {sorted(dup)}")
    return cases


def classify(case, rc, out, err, timed_out, lost, hostile, problems):
    """The class of one result (one of :data:`CLASSES`) and a short reason."""
    lines = [line for line in err.splitlines() if line.strip()]
    if timed_out:
        return "hang", f"still running after {case.timeout:.0f} s"
    sent = case.interrupt[0] if case.interrupt else None
    if rc is not None and rc < 0 and -rc != sent:
        return "crash", f"killed by signal {signal.Signals(-rc).name}"
    if hostile:
        return "hostile code", f"marker written: {', '.join(hostile)}"
    if lost:
        return "lost", f"changed or removed: {', '.join(lost[:3])}"
    if "Traceback (most recent call last)" in out + err:
        tail = lines[-1] if lines else ""
        return "traceback", tail[:160]
    if problems:
        return "other", "; ".join(problems)[:160]
    last = lines[-1] if lines else ""
    if case.expect == "signal":
        if rc in (0, 130, 143):
            return ("accepted" if rc == 0 else "clean"), f"exit {rc}"
        return "other", f"exit {rc} after the signal: {last[:120]}"
    if rc == 2 and CLEAN_LINE.match(last) and case.expect in ("clean", "either"):
        return "clean", last[:160]
    if rc == 0 and case.expect in ("ok", "either"):
        return "accepted", ""
    return "other", f"exit {rc}, expected {case.expect}: {last[:140]}"


def run_case(case, ctx):
    """Run one case; returns ``(class, reason, seconds)``."""
    if case.prepare is not None:
        case.prepare(ctx)
    protect = [_fill(p, ctx) for p in case.protect]
    before = hash_paths(protect)
    markers_before = set(os.listdir(ctx["markers"]))
    argv = [_fill(a, ctx) for a in case.argv]
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "ensai_tf.cli", *argv], cwd=ctx["work"],
                            env=_env(**(case.env or {})), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, errors="replace",
                            start_new_session=True)
    timed_out = False
    try:
        if case.interrupt:
            try:
                out, err = proc.communicate(timeout=case.interrupt[1])
            except subprocess.TimeoutExpired:
                proc.send_signal(case.interrupt[0])
                out, err = proc.communicate(timeout=case.timeout)
        else:
            out, err = proc.communicate(timeout=case.timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    took = time.monotonic() - start
    after = hash_paths(protect)
    lost = sorted(k for k, v in before.items() if after.get(k) != v)
    hostile = sorted(set(os.listdir(ctx["markers"])) - markers_before)
    problems = case.check(ctx) if case.check is not None else []
    cls, reason = classify(case, None if timed_out else proc.returncode, out or "", err or "",
                           timed_out, lost, hostile, problems)
    return cls, reason, took

