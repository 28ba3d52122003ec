"""Copy trained runs into ``trained_weights/`` and check the size limits.

Usage::

    python tools/ship_weights.py scratch/shipped/runs [--check-n 200] [--only NAME ...]

For each network folder of ``RUNS`` (``alexnet``, ``ensai_net``, ``overfeat``,
``inception_v4``) it copies ``model.keras`` (the best-validation weights, for
inference and as combiner backbones), ``config.yaml``, ``log.csv`` and the
test-set ``metrics.json``/``table1.md``/``figure1.png`` written by
``ensai evaluate``; for ``combined`` it ships ``combiner.json`` (the
combination weights and its backbone files, rewritten relative to
``trained_weights/combined``; each backbone must be a shipped ``model.keras``
unchanged since ``ensai combine``, so combine after shipping the networks) and
the same reports, and checks that the record rebuilds the run's
``model.keras`` predictions. It then evaluates every shipped model
on the first ``--check-n`` test lenses and stores those metrics as
``metrics.json["check"]``, which ``tests/test_trained_weights.py`` reproduces.
A network's ``log.csv`` gets a ``stage`` column: a run warm-started from the
shipped weights of the same network appends its epochs to the shipped log as
the next stage, so the log (and the images-seen count) covers all its training.
Existing files in ``trained_weights/<name>/`` are replaced (the old versions
stay in git history). Fails if a file exceeds 50 MB or the folder 150 MB.

The Gaussian-head networks, ``alexnet_gaussian`` (AlexNet with a diagonal
Gaussian head) and ``alexnet_shear`` (the same with the shear outputs, trained
on lenses with shear), also ship their ``calibration.json`` and
``calibration.png``; ``alexnet_shear`` also, from ``RUNS/shear_cmp`` (the
shear comparison, ``ensai evaluate trained_weights/alexnet RUNS/alexnet_shear
--experiment shear --out RUNS/shear_cmp``) ``shear_comparison.md`` and this
network's shear-lens report as ``metrics_shear.json`` and
``calibration_shear.png``. ``--only`` ships just the named folders and leaves the others.

``--reevaluate`` re-measures the folders already in ``trained_weights/`` in
place, with the package's current inference (float32): with
``--check-only`` just ``metrics.json["check"]``; otherwise also the full
test-set reports and, for the Gaussian-head networks, their calibration
(``ensai calibrate --preset paper --n 3000``, with ``--experiment shear`` for
``alexnet_shear``) and the shear comparison of ``alexnet_shear`` with ``alexnet``.
"""

import argparse
import json
import os
import pathlib
import shutil
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEST = ROOT / "trained_weights"
NETWORKS = ("alexnet", "ensai_net", "overfeat", "inception_v4")
UNCERTAINTY_NETWORKS = ("alexnet_shear", "alexnet_gaussian")
SHEAR_NETWORKS = ("alexnet_shear",)
ALL_NAMES = NETWORKS + ("combined",) + UNCERTAINTY_NETWORKS
SINGLE_FILES = ("model.keras", "config.yaml", "log.csv")
UNCERTAINTY_FILES = SINGLE_FILES + ("calibration.json",)
COMBINED_FILES = ("config.yaml", "log.csv", "combiner.json")
# The combined model ships by reference to the shipped backbones (combiner.json,
# ensai_tf.models.stored_combiner.load_combined): a model.keras of five backbones is
# 54.5 MB, over the 50 MB per-file limit, and would copy 46+ MB that ship beside it;
# `export_saved_model(stored_combiner.load_combined("trained_weights/combined"), ...)`
# makes a SavedModel from it on the user's machine.
REPORTS = ("metrics.json", "table1.md", "figure1.png")
MAX_FILE_MB = 50.0  # decimal megabytes, as the project's limit
MAX_TOTAL_MB = 150.0


def _copy(src, dst):
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy2(src, dst)


def _deflate(path):
    """Re-write a ``.keras`` archive with deflate compression (Keras stores it uncompressed).

    Float weights shrink by about 10%, which keeps the combined model under
    the 50 MB per-file limit; Keras reads either form.
    """
    import zipfile

    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(
            tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    tmp.replace(path)


def _read_log(path):
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _staged_log(run, name, shipped_rows):
    """The rows of ``log.csv`` over every training stage of this network.

    A run warm-started from the shipped weights of the same network
    (``train.init_weights = trained_weights/<name>/model.keras``) continues
    them, so its epochs are appended to the shipped log as the next
    ``stage``; any other run starts a new log at stage 1.
    """
    import yaml

    init = yaml.safe_load((run / "config.yaml").read_text())["train"].get("init_weights", "")
    rows = _read_log(run / "log.csv")
    continued = bool(init) and shipped_rows and (
        (ROOT / init).resolve() == (DEST / name / "model.keras").resolve())
    previous = shipped_rows if continued else []
    bare = [{k: v for k, v in r.items() if k != "stage"} for r in previous]
    if rows and bare[-len(rows):] == rows:  # this run was shipped before: replace its stage
        previous = previous[:-len(rows)]
    stage = max((int(r.get("stage") or 1) for r in previous), default=0) + 1
    return [{"stage": r.get("stage") or "1", **{k: v for k, v in r.items() if k != "stage"}}
            for r in previous] + [{"stage": str(stage), **r} for r in rows]


def _write_log(path, rows):
    import csv

    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)


def _strip(run, out):
    """Ship the weights without optimiser state (a third of the size of a training file).

    The trained ``model.keras`` is loaded without compiling, every layer set to
    compute in float32 (as ``ensai predict`` does), and saved again, so plain
    ``keras.saving.load_model`` gives ``ensai predict``'s numbers; the copy
    must predict exactly what the trained file predicts.
    """
    import numpy as np

    from ensai_tf import inference
    from ensai_tf.models.loading import load_keras_model

    model = load_keras_model(run / "model.keras")
    model.save(out / "model.keras")
    _deflate(out / "model.keras")
    images = np.random.default_rng(0).uniform(0, 1, (4, 192, 192, 1)).astype(np.float32)
    fn, _ = inference.load_predictor(out)
    reference, _ = inference.load_predictor(run / "model.keras")
    if not np.array_equal(fn(images), reference(images)):
        sys.exit(f"{out}: the shipped weights do not reproduce {run}'s predictions")


def _ship_combiner(run, out):
    """Ship the combined network as its ``combiner.json``, by reference to the shipped backbones."""
    import numpy as np

    from ensai_tf import inference, model_dir
    from ensai_tf.models import stored_combiner

    record = json.loads((run / "combiner.json").read_text())
    if "weights" not in record:
        sys.exit(f"{run}: its combiner.json has no combination weights; run 'ensai combine' again")
    backbones = []
    for path, sha in zip(stored_combiner.backbone_files(run, record), record["backbone_sha256"]):
        if path.name != "model.keras" or path.parent.parent != DEST.resolve():
            sys.exit(f"{run}: backbone {path} is not a shipped network; run 'ensai combine "
                     "--models trained_weights/NAME ...' after shipping the networks")
        if model_dir.file_sha256(path) != sha:
            sys.exit(f"{run}: {path} changed since the combiner was trained; ship the networks "
                     "first, then run 'ensai combine' on trained_weights/NAME")
        backbones.append(os.path.relpath(path, out.resolve()))
    (out / "combiner.json").write_text(json.dumps({**record, "backbones": backbones}, indent=1)
                                       + "\n")
    images = np.random.default_rng(0).uniform(0, 1, (4, 192, 192, 1)).astype(np.float32)
    fn, _ = inference.load_predictor(out)
    reference, _ = inference.load_predictor(run / "model.keras")
    # the same float32 layers and weights; only the graph's op order may differ
    diff = float(np.max(np.abs(fn(images) - reference(images))))
    if diff > 1e-6:
        sys.exit(f"{out}: the combiner rebuilt from combiner.json differs from {run}'s "
                 f"model.keras by {diff:.2e}")


def ship(runs, check_n, only=None):
    from ensai_tf import config as config_lib

    for name in only or NETWORKS + ("combined",):
        run = runs / name
        files = (SINGLE_FILES if name in NETWORKS else UNCERTAINTY_FILES
                 if name in UNCERTAINTY_NETWORKS else COMBINED_FILES + ("model.keras",))
        reports = REPORTS + (("calibration.png",) if name in UNCERTAINTY_NETWORKS else ())
        missing = [f for f in files if not (run / f).exists()] + \
                  [f for f in reports if not (run / "eval" / f).exists()]
        if missing:
            sys.exit(f"{run}: missing {', '.join(missing)}; run tools/train_shipped_weights.sh")
        out = DEST / name
        shipped_log = _read_log(out / "log.csv") if (out / "log.csv").is_file() else []
        log = (_staged_log(run, name, shipped_log) if name in NETWORKS + UNCERTAINTY_NETWORKS
               else None)
        before = {f.relative_to(out) for f in out.rglob("*") if f.is_file()}
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        for f in files:
            if f not in ("model.keras", "saved_model"):
                _copy(run / f, out / f)
        if log is not None:
            _write_log(out / "log.csv", log)
        if name == "combined":
            _ship_combiner(run, out)
        else:
            _strip(run, out)
        for f in reports:
            _copy(run / "eval" / f, out / f)
        comparison = runs / "shear_cmp"
        if name in SHEAR_NETWORKS and (comparison / "shear_comparison.md").is_file():
            # ensai evaluate trained_weights/alexnet RUNS/alexnet_shear --experiment shear
            #     --out RUNS/shear_cmp: this network is the second one compared
            _copy(comparison / "shear_comparison.md", out / "shear_comparison.md")
            (shear_eval,) = comparison.glob("2-*")
            _copy(shear_eval / "metrics.json", out / "metrics_shear.json")
            _copy(shear_eval / "calibration.png", out / "calibration_shear.png")
        _store_check(out, config_lib.get_preset("paper"), check_n, runs)
        dropped = sorted(str(f) for f in before - {f.relative_to(out) for f in out.rglob("*")})
        if dropped:
            print(f"{out}: no longer shipped (still in git history): {', '.join(dropped)}")

    print_table()
    sizes = {p: p.stat().st_size / 1e6 for p in DEST.rglob("*") if p.is_file()}
    too_big = [f"{p} ({mb:.1f} MB)" for p, mb in sizes.items() if mb > MAX_FILE_MB]
    total = sum(sizes.values())
    for name in ALL_NAMES:
        mb = sum(v for p, v in sizes.items() if (DEST / name) in p.parents)
        print(f"{name:14s} {mb:7.1f} MB")
    print(f"{'total':14s} {total:7.1f} MB")
    if too_big or total > MAX_TOTAL_MB:
        sys.exit(f"size limits exceeded: files {too_big}, total {total:.1f} MB "
                 f"(limits {MAX_FILE_MB} MB per file, {MAX_TOTAL_MB} MB in all)")


def _store_check(out, cfg, check_n, work):
    from ensai_tf import evaluate

    check = evaluate.evaluate(str(out), n=check_n, out_dir=str(work / "check" / out.name),
                              config=cfg, overwrite=True)
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["model"] = f"trained_weights/{out.name}"
    metrics["check"] = {"n": check_n, "metrics": check["metrics"]}
    if "coverage" in check:
        metrics["check"]["coverage"] = check["coverage"]
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")


def reevaluate(work, check_n, only=None, check_only=False):
    """Re-measure the shipped folders in place (see the module docstring)."""
    from ensai_tf import config as config_lib
    from ensai_tf import calibrate, evaluate

    cfg = config_lib.get_preset("paper")
    for name in only or ALL_NAMES:
        out = DEST / name
        if not check_only:
            if name in UNCERTAINTY_NETWORKS:
                calibrate.calibrate(out, config=cfg, n=3000,
                                    experiment="shear" if name in SHEAR_NETWORKS else None)
                (out / "calibration-previous.json").unlink()
            reports = REPORTS + (("calibration.png",) if name in UNCERTAINTY_NETWORKS else ())
            evaluate.evaluate(str(out), n=cfg.data.test_size, out_dir=str(work / name), config=cfg,
                              overwrite=True)
            for f in reports:
                _copy(work / name / f, out / f)
            if name in SHEAR_NETWORKS:
                comparison = work / "shear_cmp"
                evaluate.compare_shear([str(DEST / "alexnet"), str(out)], str(comparison),
                                       config=cfg, overwrite=True)
                _copy(comparison / "shear_comparison.md", out / "shear_comparison.md")
                (shear_eval,) = comparison.glob("2-*")
                _copy(shear_eval / "metrics.json", out / "metrics_shear.json")
                _copy(shear_eval / "calibration.png", out / "calibration_shear.png")
        _store_check(out, cfg, check_n, work)
        print(f"re-evaluated {name}", flush=True)
    print_table()


def print_table():
    """Print the Markdown table of shipped 68% errors beside the paper's Table 1."""
    import csv

    from ensai_tf.conventions import PARAM_NAMES
    from ensai_tf.reports import PAPER_TABLE1

    paper = dict(zip(NETWORKS + ("combined",), (
        PAPER_TABLE1["Network 2 (AlexNet)"], PAPER_TABLE1["Network 4 (own design)"],
        PAPER_TABLE1["Network 3 (Overfeat)"], PAPER_TABLE1["Network 1 (Inception-v4)"],
        PAPER_TABLE1["Combined"])))
    print("| network | params (M) | images seen | " + " | ".join(PARAM_NAMES)
          + " | paper | ratio to paper |")
    print("|---" * 10 + "|")
    for name in NETWORKS + ("combined",):
        if not (DEST / name / "metrics.json").is_file():
            continue
        m = json.loads((DEST / name / "metrics.json").read_text())["metrics"]
        ours = [m[p]["error68"] for p in PARAM_NAMES]
        seen = "-"
        log = DEST / name / "log.csv"
        if name in NETWORKS and log.is_file():
            import yaml

            cfg = yaml.safe_load((DEST / name / "config.yaml").read_text())["train"]
            epochs = len(list(csv.DictReader(log.open())))
            seen = f"{epochs * cfg['steps_per_epoch'] * cfg['batch_size'] / 1e3:.0f}k"
        params = "-"
        if name == "combined":
            from ensai_tf.models import stored_combiner

            params = f"{stored_combiner.load_combined(DEST / name).count_params() / 1e6:.2f}"
        elif (DEST / name / "model.keras").is_file():
            import keras

            import ensai_tf  # noqa: F401  (registers the custom Keras objects)

            params = f"{keras.saving.load_model(DEST / name / 'model.keras', compile=False).count_params() / 1e6:.2f}"
        ratio = " / ".join(f"{o / q:.1f}" for o, q in zip(ours, paper[name]))
        print(f"| {name} | {params} | {seen} | " + " | ".join(f"{v:.3f}" for v in ours)
              + " | " + " / ".join(f"{v:.2f}" for v in paper[name]) + f" | {ratio} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=pathlib.Path,
                        help="folder of trained runs (with --reevaluate: a work folder)")
    parser.add_argument("--check-n", type=int, default=200,
                        help="test lenses of the reproducibility check (default: 200)")
    parser.add_argument("--only", nargs="+", choices=ALL_NAMES, default=None,
                        help="ship just these folders (default: the four networks and combined)")
    parser.add_argument("--reevaluate", action="store_true",
                        help="re-measure the shipped folders in place instead of shipping runs")
    parser.add_argument("--check-only", action="store_true",
                        help="with --reevaluate: only metrics.json's check subset")
    args = parser.parse_args()
    if args.reevaluate:
        reevaluate(args.runs, args.check_n, args.only, args.check_only)
    else:
        ship(args.runs, args.check_n, args.only)


if __name__ == "__main__":
    main()
