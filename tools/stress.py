"""Run the input fuzzers and model-folder fault tests for a given time.

Each round runs ``tests/test_fuzz_inputs.py`` and
``tests/test_model_dir_faults.py`` under pytest in a fresh process, with
``ENSAI_FUZZ_EXAMPLES`` raised (more hypothesis examples per fuzzer) and a new
``--hypothesis-seed`` each round, until ``--minutes`` have passed. At the end
it prints, per class of bad input (test function), how many cases were run
and how many failed, and the first line of each distinct failure.

The default test suite runs the same tests with a handful of examples; this
tool is the longer setting asked for by issue 10.

Usage:
    python tools/stress.py [--minutes 5] [--examples 200] [--seed 0]
        [--keep-going]

Exit status: 0 when nothing failed, 1 otherwise.
"""

import argparse
import collections
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

__all__ = ["main", "run_round", "summarise"]

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEST_FILES = ("tests/test_fuzz_inputs.py", "tests/test_model_dir_faults.py")


def _test_class(name):
    """'test_bad_npy_is_refused_naming_the_file[rank_1]' -> the function name."""
    return re.sub(r"\[.*\]$", "", name)


def run_round(examples, seed, timeout_s):
    """Run the fault tests once; returns a list of (class, case, outcome, message).

    Args:
        examples: hypothesis examples per fuzzing test.
        seed: hypothesis seed of this round.
        timeout_s: wall-clock limit of the round, seconds.
    """
    with tempfile.TemporaryDirectory() as tmp:
        report = pathlib.Path(tmp) / "junit.xml"
        env = dict(os.environ, ENSAI_FUZZ_EXAMPLES=str(examples), TF_CPP_MIN_LOG_LEVEL="3")
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


def main(argv=None):
    """Entry point; returns the exit status (0: nothing failed)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="total time (default: 5)")
    parser.add_argument("--examples", type=int, default=200,
                        help="hypothesis examples per fuzzing test per round (default: 200)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first round")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.examples < 1:
        parser.error("--minutes must be > 0 and --examples >= 1")
    deadline = time.monotonic() + 60.0 * args.minutes
    all_results = []
    round_no = 0
    while time.monotonic() < deadline:
        seed = args.seed + round_no
        left = max(deadline - time.monotonic(), 30.0)
        start = time.monotonic()
        results = run_round(args.examples, seed, left + 60.0)
        bad = sum(r[2] in ("failure", "error", "timeout") for r in results)
        print(f"round {round_no} (seed {seed}): {len(results)} cases, {bad} failed, "
              f"{time.monotonic() - start:.0f} s", flush=True)
        all_results.extend(results)
        round_no += 1
    return 1 if summarise(all_results, args.examples) else 0


if __name__ == "__main__":
    sys.exit(main())
