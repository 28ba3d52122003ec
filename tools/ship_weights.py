"""Copy trained runs into ``trained_weights/`` and check the size limits (issue 8).

Usage::

    python tools/ship_weights.py scratch/shipped/runs [--check-n 200]

For each network folder of ``RUNS`` (``alexnet``, ``ensai_net``, ``overfeat``,
``inception_v4``) it copies ``model.keras`` (the best-validation weights, for
inference and as combiner backbones), ``config.yaml``, ``log.csv`` and the
test-set ``metrics.json``/``table1.md``/``figure1.png`` written by
``ensai evaluate``; for ``combined`` it copies ``saved_model/`` (inference),
``combiner.json`` and the same reports. It then evaluates every shipped model
on the first ``--check-n`` test lenses and stores those metrics as
``metrics.json["check"]``, which ``tests/test_trained_weights.py`` reproduces.
Existing files in ``trained_weights/<name>/`` are replaced (the old versions
stay in git history). Fails if a file exceeds 50 MB or the folder 150 MB.
"""

import argparse
import json
import pathlib
import shutil
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEST = ROOT / "trained_weights"
NETWORKS = ("alexnet", "ensai_net", "overfeat", "inception_v4")
SINGLE_FILES = ("model.keras", "config.yaml", "log.csv")
COMBINED_FILES = ("config.yaml", "log.csv", "combiner.json")
REPORTS = ("metrics.json", "table1.md", "figure1.png")
MAX_FILE_MB = 50.0
MAX_TOTAL_MB = 150.0


def _copy(src, dst):
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy2(src, dst)


def ship(runs, check_n):
    from ensai_tf import config as config_lib
    from ensai_tf import evaluate

    for name in NETWORKS + ("combined",):
        run = runs / name
        files = SINGLE_FILES if name in NETWORKS else COMBINED_FILES + ("saved_model",)
        missing = [f for f in files if not (run / f).exists()] + \
                  [f for f in REPORTS if not (run / "eval" / f).exists()]
        if missing:
            sys.exit(f"{run}: missing {', '.join(missing)}; run tools/train_shipped_weights.sh")
        out = DEST / name
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        for f in files:
            _copy(run / f, out / f)
        for f in REPORTS:
            _copy(run / "eval" / f, out / f)
        cfg = config_lib.get_preset("paper")
        check = evaluate.evaluate(str(out), n=check_n, out_dir=str(runs / "check" / name),
                                  config=cfg)
        metrics = json.loads((out / "metrics.json").read_text())
        metrics["model"] = f"trained_weights/{name}"
        metrics["check"] = {"n": check_n, "metrics": check["metrics"]}
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")

    sizes = {p: p.stat().st_size / 2**20 for p in DEST.rglob("*") if p.is_file()}
    too_big = [f"{p} ({mb:.1f} MB)" for p, mb in sizes.items() if mb > MAX_FILE_MB]
    total = sum(sizes.values())
    for name in NETWORKS + ("combined",):
        mb = sum(v for p, v in sizes.items() if (DEST / name) in p.parents)
        print(f"{name:14s} {mb:7.1f} MB")
    print(f"{'total':14s} {total:7.1f} MB")
    if too_big or total > MAX_TOTAL_MB:
        sys.exit(f"size limits exceeded: files {too_big}, total {total:.1f} MB "
                 f"(limits {MAX_FILE_MB} MB per file, {MAX_TOTAL_MB} MB in all)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=pathlib.Path, help="folder of trained runs")
    parser.add_argument("--check-n", type=int, default=200,
                        help="test lenses of the reproducibility check (default: 200)")
    args = parser.parse_args()
    ship(args.runs, args.check_n)


if __name__ == "__main__":
    main()
