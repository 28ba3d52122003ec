"""Accuracy per CPU-hour of the `cpu` preset's training settings.

Trains one network once per variant, each from scratch with the same
wall-clock budget, arcs and seeds, one after another so they never share the
cores, and prints a table of what each reached on the fixed validation set:
the best validation loss (parity-min MSE summed over the five targets, docs/design.md
§7.1), the validation rms of every target at that epoch, the images seen and
the CPU time the run used.

Usage::

    python tools/settings_study.py --arcs scratch/s14/arcs --out scratch/s14/study \
        --minutes 6 --model alexnet

Each variant's run folder is kept under ``--out`` (``log.csv``,
``config.yaml``, TensorBoard logs); a variant whose folder already holds a
``model.keras`` is not retrained, so the study can be resumed. The table is
also written to ``--out/study.md``.
"""

import argparse
import csv
import json
import os
import pathlib
import subprocess
import sys
import time

VARIANTS = {
    "baseline (cpu preset)": [],
    "float32": ["train.mixed_precision=false"],
    "batch 64": ["train.batch_size=64", "train.steps_per_epoch=125"],
    "lr 1e-3 + 500-step warm-up": ["train.learning_rate=0.001", "train.warmup_steps=500"],
}
"""Variant name -> ``--set`` overrides on top of the cpu preset."""

PARAMS = ("theta_e", "e_x", "e_y", "x_l", "y_l")


def _slug(name):
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def _run(variant, overrides, args):
    run_dir = pathlib.Path(args.out) / _slug(variant)
    if (run_dir / "model.keras").exists():
        return run_dir, json.loads((run_dir / "study_run.json").read_text())
    launcher = ["-m", "ensai_tf.cli"] if not args.launcher else [args.launcher]
    command = [sys.executable, *launcher, "train", "--model", args.model,
               "--preset", "cpu", "--model-dir", str(run_dir), "--overwrite",
               "--set", f"data.arcs_dir={args.arcs}",
               "--set", f"train.time_budget_minutes={args.minutes}"]
    for item in overrides:
        command += ["--set", item]
    print(f"== {variant}: {' '.join(command[3:])}", flush=True)
    before = os.times()
    start = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    after = os.times()
    record = {"wall_s": time.perf_counter() - start,
              "cpu_s": (after.children_user - before.children_user)
              + (after.children_system - before.children_system)}
    (run_dir / "study_run.json").write_text(json.dumps(record))
    return run_dir, record


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arcs", required=True, help="pre-generated training arcs folder")
    parser.add_argument("--out", required=True, help="folder for the runs and study.md")
    parser.add_argument("--minutes", type=float, default=6.0, help="wall-clock budget per run")
    parser.add_argument("--model", default="alexnet", help="network to train")
    parser.add_argument("--only", nargs="*", default=None, help="variant names to run")
    parser.add_argument("--launcher", default="", help="a Python script that runs the ensai CLI "
                                                       "(default: python -m ensai_tf.cli)")
    args = parser.parse_args(argv)
    pathlib.Path(args.out).mkdir(parents=True, exist_ok=True)

    import yaml

    lines = [f"{args.model}, cpu preset, {args.minutes:g} min per variant, arcs from "
             f"{args.arcs}", "",
             "| variant | epochs | images seen | CPU min | best val loss | "
             + " | ".join(f"val {p} rms" for p in PARAMS) + " |",
             "|---" * (5 + len(PARAMS)) + "|"]
    for variant, overrides in VARIANTS.items():
        if args.only and variant not in args.only:
            continue
        run_dir, record = _run(variant, overrides, args)
        with open(run_dir / "log.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        best = min(rows, key=lambda r: float(r["val_loss"]))
        train_cfg = yaml.safe_load((run_dir / "config.yaml").read_text())["train"]
        seen = len(rows) * train_cfg["steps_per_epoch"] * train_cfg["batch_size"]
        lines.append(f"| {variant} | {len(rows)} | {seen / 1000:.0f}k | "
                     f"{record['cpu_s'] / 60:.1f} | {float(best['val_loss']):.4f} | "
                     + " | ".join(f"{float(best[f'val_{p}_rms']):.3f}" for p in PARAMS) + " |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    (pathlib.Path(args.out) / "study.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
