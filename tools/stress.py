"""Try hostile inputs and faults against ``ensai``; run the fuzzers and kill-and-resume loop.

**Cases** (the default, or ``--only cases``): every case of the catalogue in
``tools/stress_cases.py`` (broken and hostile FITS, ``.npy``, model folders,
``combiner.json``, configs, ``--set`` and YAML values, two-band options,
output paths on read-only and full file systems, kill -9 and resume, locks,
concurrent runs, signals) runs once as an ``ensai`` subprocess on the files
of ``tools/stress_fixtures.py``. Each result is classified (clean refusal,
accepted, traceback, lost user file, hostile code executed, hang, crash,
other) and the totals table is printed::

    python tools/stress.py                    # all cases, 2 at a time
    python tools/stress.py --match twoband/   # the cases whose name contains this

Read-only and full file systems are small tmpfs mounts, made when the tool
runs as root (the cases that need them are skipped otherwise).

**Rounds** (``--only fuzz``, ``--only kill`` or ``--only rounds`` for both):
two kinds of round alternate until ``--minutes`` have passed:

- **fuzz**: ``tests/test_fuzz_inputs.py``, ``tests/test_model_dir_faults.py``,
  ``tests/test_dirlock.py`` and the lensing finite sweep
  ``tests/lensing/test_finite_sweep.py`` under pytest in a fresh process,
  with ``ENSAI_FUZZ_EXAMPLES`` raised (more hypothesis examples per fuzzer),
  ``ENSAI_SWEEP_DRAWS`` raised (default 10^6 draws instead of 10^5) and a new
  ``--hypothesis-seed`` each round;
- **kill**: a tiny smoke training (``ensai train --preset smoke``, EnsaiNet
  at width 0.25 on 48-pixel images) in a subprocess, killed with SIGKILL at
  a random moment up to ``--kills`` times and restarted each time with
  ``--resume`` (or ``--overwrite`` when it died before writing its
  config), then left to finish. It must exit 0 with ``model.keras``,
  ``saved_model/``, ``best.keras`` and one ``log.csv`` row per epoch, and
  no backup, lock or temporary file left.

It prints each round, then per class of bad input or fault (test function,
or ``kill_and_resume``) how many cases ran and how many failed, and the first
line of each distinct failure.

The default test suite runs the same tests with a handful of examples; this
tool is the longer setting.

Usage:
    python tools/stress.py [--only cases|fuzz|kill|rounds] [--jobs 2] [--match TEXT]
        [--minutes 5] [--examples 200] [--seed 0] [--sweep-draws 1000000] [--kills 3]
        [--epochs 3] [--keep-going] [--keep-files]

Without ``--keep-going`` the rounds stop after the first round with a
failure; with it, they run for the whole time. Exit status: 0 when nothing
failed (for cases: no traceback, lost file, hostile code, hang, crash or
other), 1 otherwise.
"""

import argparse
import collections
import csv
import json
import os
import pathlib
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
import zipfile
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import stress_cases  # noqa: E402  (tools/ is not a package)
import stress_fixtures  # noqa: E402

__all__ = ["main", "run_round", "run_kill_resume", "check_finished_run", "summarise",
           "run_cases", "print_totals"]

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEST_FILES = ("tests/test_fuzz_inputs.py", "tests/test_model_dir_faults.py",
              "tests/test_dirlock.py", "tests/lensing/test_finite_sweep.py")
TRAIN_SETTINGS = ("image.npix=48", "model.width=0.25", "train.image_summaries=0",
                  "train.steps_per_epoch=2")
"""Overrides of the smoke preset for the kill-and-resume run: seconds per epoch on a CPU."""


def _test_class(name):
    """'test_bad_npy_is_refused_naming_the_file[rank_1]' -> the function name."""
    return re.sub(r"\[.*\]$", "", name)


def _env(**extra):
    """This process's environment with the worktree first on PYTHONPATH."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path, TF_CPP_MIN_LOG_LEVEL="3", **extra)


def run_round(examples, seed, timeout_s, sweep_draws=10**6):
    """Run the fault tests once; returns a list of (class, case, outcome, message).

    Args:
        examples: hypothesis examples per fuzzing test.
        seed: hypothesis seed of this round.
        timeout_s: wall-clock limit of the round, seconds.
        sweep_draws: draws of the lensing finite-output sweep.
    """
    with tempfile.TemporaryDirectory() as tmp:
        report = pathlib.Path(tmp) / "junit.xml"
        env = _env(ENSAI_FUZZ_EXAMPLES=str(examples), ENSAI_SWEEP_DRAWS=str(sweep_draws))
        cmd = [sys.executable, "-m", "pytest", *TEST_FILES, "-q", "-p", "no:cacheprovider",
               "-W", "ignore", f"--hypothesis-seed={seed}", f"--junitxml={report}"]
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return [("(round)", f"seed {seed}", "timeout", f"round exceeded {timeout_s:.0f} s")]
        if not report.is_file():
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
            return [("(round)", f"seed {seed}", "error", " | ".join(tail))]
        results = []
        for case in ET.parse(report).getroot().iter("testcase"):
            name = case.get("name", "?")
            outcome, message = "passed", ""
            for tag in ("failure", "error"):
                node = case.find(tag)
                if node is not None:
                    outcome = tag
                    message = (node.get("message") or node.text or "").strip().splitlines()
                    message = message[0][:200] if message else ""
            skipped = case.find("skipped")
            if skipped is not None:
                outcome = "xfail" if "xfail" in (skipped.get("type") or "") else "skipped"
                message = (skipped.get("message") or "")[:200]
            results.append((_test_class(name), name, outcome, message))
        return results


def check_finished_run(run, epochs):
    """Problems of a model folder that a finished run left (empty list: none).

    Args:
        run: the model folder.
        epochs: the epochs the run was asked for.
    """
    run = pathlib.Path(run)
    problems = []
    for name in ("config.yaml", "best.keras", "model.keras", "saved_model/saved_model.pb",
                 "log.csv"):
        if not (run / name).is_file():
            problems.append(f"{name} missing")
    for name in ("best.keras", "model.keras"):
        if (run / name).is_file() and not zipfile.is_zipfile(run / name):
            problems.append(f"{name} is not a complete .keras (zip) file")
    if (run / "backup").exists():
        problems.append("backup/ left behind")
    # a backup renamed for deletion when the kill came is harmless (the next
    # --resume or --overwrite removes it); any other temporary file is not
    junk = sorted(p.name for p in run.iterdir()
                  if p.name.startswith((".ensai-tmp-", ".ensai.lock"))
                  and not p.name.endswith("-backup"))
    if junk:
        problems.append(f"left behind: {', '.join(junk)}")
    if (run / "log.csv").is_file():
        with open(run / "log.csv", newline="") as f:
            logged = [int(float(r["epoch"])) for r in csv.DictReader(f)]
        if logged != list(range(epochs)):
            problems.append(f"log.csv epochs {logged}, expected {list(range(epochs))}")
    return problems


def _run_state(run):
    """How far a killed run got, in a few words, from its folder."""
    run = pathlib.Path(run)
    meta = run / "backup" / "training_metadata.json"
    if (run / "model.keras").is_file():
        return "after model.keras"
    if meta.is_file():
        try:
            return f"backup of epoch {json.loads(meta.read_text())['epoch']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "backup being written"
    if (run / "config.yaml").is_file():
        return "config written, no backup yet"
    return "before the folder was set up" if not run.exists() else "folder locked, no config"


def _train_command(run, cache, epochs, mode):
    cmd = [sys.executable, "-m", "ensai_tf.cli", "train", "--preset", "smoke", "--model",
           "ensai_net", "--model-dir", str(run)]
    for item in TRAIN_SETTINGS + (f"train.epochs={epochs}", f"data.cache_dir={cache}"):
        cmd += ["--set", item]
    return cmd + ([f"--{mode}"] if mode else [])


def run_kill_resume(trial, rng, kills, epochs, cache, timeout_s, state):
    """One kill-and-resume trial; returns a list of (class, case, outcome, message).

    The training is started, killed with SIGKILL after a random delay (up to
    the longest uninterrupted attempt seen so far, ``state["longest_s"]``) up to
    ``kills`` times, restarted with ``--resume`` (or ``--overwrite`` when no
    config.yaml was written yet), and finally left to finish.

    Args:
        trial: trial number, for the report.
        rng: ``random.Random`` drawing the kill delays.
        kills: SIGKILLs per trial.
        epochs: epochs of the training.
        cache: shared data cache folder (the validation set is built once).
        timeout_s: wall-clock limit of the trial, seconds.
        state: dict kept between trials (``longest_s``).
    """
    case = f"trial {trial}"
    deadline = time.monotonic() + timeout_s
    with tempfile.TemporaryDirectory() as tmp:
        run = pathlib.Path(tmp) / "run"
        mode = None
        tried = []
        for attempt in range(kills + 1):
            kill = attempt < kills
            delay = rng.uniform(0.5, state.get("longest_s", 45.0)) if kill else None
            start = time.monotonic()
            proc = subprocess.Popen(_train_command(run, cache, epochs, mode), cwd=tmp, env=_env(),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            try:
                _, err = proc.communicate(timeout=delay if kill else max(deadline - start, 1.0))
                killed = False
            except subprocess.TimeoutExpired:
                if not kill:
                    proc.kill()
                    proc.communicate()
                    return [("kill_and_resume", case, "timeout",
                             f"the last attempt ran past the {timeout_s:.0f} s limit")]
                proc.send_signal(signal.SIGKILL)
                _, err = proc.communicate()
                killed = True
            took = time.monotonic() - start
            if killed:
                tried.append(f"SIGKILL at {took:.1f} s ({_run_state(run)})")
            else:
                state["longest_s"] = max(state.get("longest_s", 0.0), took)
                tried.append(f"exit {proc.returncode} after {took:.1f} s")
                if proc.returncode != 0:
                    last = (err or "").strip().splitlines()[-1:] or ["(no message)"]
                    print(f"  kill_and_resume {case}: {'; '.join(tried)}", flush=True)
                    return [("kill_and_resume", case, "failure",
                             f"attempt {attempt} ({mode or 'fresh'}) exited "
                             f"{proc.returncode}: {last[0][:200]}")]
                break
            if (run / "model.keras").is_file() and not (run / "backup").exists():
                tried.append("it had finished")  # killed after its last write
                break
            mode = "resume" if (run / "config.yaml").is_file() else (
                "overwrite" if run.exists() else None)
        print(f"  kill_and_resume {case}: {'; '.join(tried)}", flush=True)
        problems = check_finished_run(run, epochs)
        if problems:
            return [("kill_and_resume", case, "failure", "; ".join(problems))]
        return [("kill_and_resume", case, "passed", "")]


def summarise(all_results, examples):
    """Print tried/failed counts per class of bad input; returns the failure count."""
    tried = collections.Counter()
    failed = collections.Counter()
    messages = collections.defaultdict(set)
    for cls, name, outcome, message in all_results:
        tried[cls] += 1
        if outcome in ("failure", "error", "timeout"):
            failed[cls] += 1
            messages[cls].add(f"{name}: {message}")
    print(f"\n{'class of bad input (test)':<62} {'cases':>6} {'failed':>6}")
    for cls in sorted(tried):
        print(f"{cls:<62} {tried[cls]:>6} {failed[cls]:>6}")
    print(f"(fuzzing tests each ran up to {examples} hypothesis examples per case)")
    known = sorted({f"{r[1]}: {r[3]}" for r in all_results if r[2] == "xfail"})
    if known:
        print("\nKNOWN failures (xfail, not counted):")
        for msg in known:
            print(f"  {msg}")
    for cls in sorted(messages):
        print(f"\nFAILED {cls}:")
        for msg in sorted(messages[cls])[:5]:
            print(f"  {msg}")
    return sum(failed.values())


def _mount_tmpfs(path, options):
    """Mount a small tmpfs at ``path``; returns whether it worked (root only)."""
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True)
    return proc.returncode == 0


def _mounts(work):
    """Read-only, full and small file systems under ``work``: ``{name: path}`` of those made."""
    made = {}
    if _mount_tmpfs(work / "ro", "ro,size=1m"):
        made["ro"] = work / "ro"
    if _mount_tmpfs(work / "small", "size=2m"):
        made["small"] = work / "small"
    if _mount_tmpfs(work / "full", "size=1m"):
        fd = os.open(work / "full" / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        made["full"] = work / "full"
    return made


def run_cases(jobs=2, match=None, keep_files=False):
    """Run the case catalogue; returns ``[(case, class, reason, seconds)]``.

    Args:
        jobs: cases run at the same time.
        match: run only cases whose name contains this text.
        keep_files: keep the work folder (its path is printed).
    """
    cases = [c for c in stress_cases.catalogue() if not match or match in c.name]
    work = pathlib.Path(tempfile.mkdtemp(prefix="ensai-stress-cases-"))
    print(f"writing the fixtures to {work} ...", flush=True)
    ctx = stress_fixtures.build_fixtures(work)
    mounts = _mounts(work)
    ctx.update({name: mounts.get(name, work / f"no-{name}") for name in ("ro", "small", "full")})
    results = []

    def one(case):
        needs = [n for n in ("ro", "small", "full") if any(f"{{{n}}}" in str(a)
                                                           for a in case.argv)]
        if any(n not in mounts for n in needs):
            return case, "skipped", "needs a tmpfs mount (run as root)", 0.0
        cls, reason, took = stress_cases.run_case(case, ctx)
        print(f"{cls:>12}  {took:6.1f} s  {case.name}" + (f"  ({reason})" if reason and cls
                                                          not in ("accepted",) else ""),
              flush=True)
        return case, cls, reason, took

    try:
        with ThreadPoolExecutor(max(1, jobs)) as pool:
            results = list(pool.map(one, cases))
    finally:
        for proc in ctx.get("holders", []):
            proc.kill()
            proc.wait()
        for name in mounts:
            subprocess.run(["umount", "-l", str(mounts[name])], capture_output=True)
        if keep_files:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return results


def print_totals(results):
    """Print the totals table of :func:`run_cases`; returns the count of bad outcomes."""
    tried = [r for r in results if r[1] != "skipped"]
    counts = collections.Counter(r[1] for r in tried)
    print(f"\n{'tried':>7} " + " ".join(f"{c:>12}" for c in stress_cases.CLASSES))
    print(f"{len(tried):>7} " + " ".join(f"{counts[c]:>12}" for c in stress_cases.CLASSES))
    skipped = len(results) - len(tried)
    if skipped:
        print(f"({skipped} skipped: they need tmpfs mounts, made only as root)")
    bad = [r for r in tried if r[1] not in ("clean", "accepted")]
    for case, cls, reason, _ in sorted(bad, key=lambda r: (r[1], r[0].name)):
        print(f"  {cls}: {case.name}: {reason}")
    return len(bad)


def main(argv=None):
    """Entry point; returns the exit status (0: nothing failed)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="total time (default: 5)")
    parser.add_argument("--examples", type=int, default=200,
                        help="hypothesis examples per fuzzing test per round (default: 200)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first round")
    parser.add_argument("--sweep-draws", type=int, default=10**6,
                        help="draws of the lensing finite sweep (default: 10^6)")
    parser.add_argument("--kills", type=int, default=3,
                        help="SIGKILLs per kill-and-resume trial (default: 3)")
    parser.add_argument("--epochs", type=int, default=3,
                        help="epochs of the kill-and-resume training (default: 3)")
    parser.add_argument("--only", choices=("cases", "fuzz", "kill", "rounds"), default="cases",
                        help="cases: the hostile-input catalogue once (default); fuzz, kill: "
                             "one kind of round; rounds: fuzz and kill rounds alternating")
    parser.add_argument("--jobs", type=int, default=2, help="cases run at once (default: 2)")
    parser.add_argument("--match", default=None, help="run only cases whose name contains this")
    parser.add_argument("--keep-files", action="store_true",
                        help="keep the cases' work folder")
    parser.add_argument("--keep-going", action="store_true",
                        help="keep running after a failed round (default: stop there)")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.examples < 1 or args.sweep_draws < 1 or args.kills < 0 \
            or args.epochs < 1:
        parser.error("--minutes must be > 0, --examples, --sweep-draws and --epochs >= 1, "
                     "--kills >= 0")
    if args.only == "cases":
        return 1 if print_totals(run_cases(args.jobs, args.match, args.keep_files)) else 0
    kinds = ["fuzz", "kill"] if args.only == "rounds" else [args.only]
    deadline = time.monotonic() + 60.0 * args.minutes
    rng = random.Random(args.seed)
    state = {}
    all_results = []
    round_no = 0
    cache = tempfile.mkdtemp(prefix="ensai-stress-cache-")
    try:
        while time.monotonic() < deadline:
            kind = kinds[round_no % len(kinds)]
            seed = args.seed + round_no
            left = max(deadline - time.monotonic(), 30.0)
            start = time.monotonic()
            if kind == "fuzz":
                results = run_round(args.examples, seed, left + 60.0, args.sweep_draws)
            else:
                results = run_kill_resume(round_no, rng, args.kills, args.epochs, cache,
                                          left + 300.0, state)
            bad = sum(r[2] in ("failure", "error", "timeout") for r in results)
            print(f"round {round_no} ({kind}, seed {seed}): {len(results)} cases, {bad} failed, "
                  f"{time.monotonic() - start:.0f} s", flush=True)
            all_results.extend(results)
            round_no += 1
            if bad and not args.keep_going:
                print("stopping at the first failed round (pass --keep-going to continue)")
                break
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return 1 if summarise(all_results, args.examples) else 0


if __name__ == "__main__":
    sys.exit(main())
