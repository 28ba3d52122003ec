"""Lenses per second and memory of ``ensai predict --catalog`` on a synthetic survey.

Writes ``--n`` cutouts (default 10,000 ``.npy`` files of 192 x 192 float32 pixels: copies
of ``--distinct`` observed lenses simulated with the project's simulator, docs/design.md
§3-§5) and a catalogue of them (every other row with an ``x``,``y`` lens position, so both
the centred and the positioned preparation run), then runs
:func:`ensai_tf.catalog.predict_catalog` with a model and prints:

- lenses per second over the whole run (reading, preparing, the network, the quality
  flags and the writes) and the network's own time per lens;
- the resident memory (VmRSS, sampled from ``/proc/self/status`` every ``--interval``
  seconds by a thread) before the run and at 10%, 50% and 100% of the catalogue, with
  the peak sampled so far, and at the end the process's peak (``getrusage`` ru_maxrss):
  memory that stays flat from 10% to 100% is what streaming promises.

Usage (the shared machine runs a training on core 0):
    taskset -c 1 python tools/benchmark_catalog.py [--n 10000] [--model trained_weights/combined]
        [--batch-size 100] [--folder DIR] [--keep]
"""

import argparse
import os
import pathlib
import resource
import shutil
import sys
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from ensai_tf import catalog  # noqa: E402
from ensai_tf.data.writer import write_observed_dataset  # noqa: E402

__all__ = ["RssSampler", "write_survey", "main"]

MILESTONES = (0.1, 0.5, 1.0)
"""Fractions of the catalogue at which the memory is printed."""


def vm_rss_mib():
    """The process's resident memory now, MiB (``VmRSS`` of ``/proc/self/status``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


class RssSampler(threading.Thread):
    """A daemon thread reading VmRSS every ``interval`` seconds; ``peak`` is the largest, MiB."""

    def __init__(self, interval=1.0):
        super().__init__(daemon=True)
        self.interval, self.peak, self._halt = interval, vm_rss_mib(), threading.Event()

    def run(self):
        while not self._halt.wait(self.interval):
            self.peak = max(self.peak, vm_rss_mib())

    def stop(self):
        self._halt.set()
        self.join()
        self.peak = max(self.peak, vm_rss_mib())


def write_survey(folder, n, distinct=16, seed=0):
    """``n`` cutouts in ``folder/cutouts`` and ``folder/catalog.csv``; returns the catalogue path.

    The cutouts are copies of ``distinct`` observed test-split lenses
    (:func:`ensai_tf.data.writer.write_observed_dataset`, 192 x 192, 0.04 arcsec pixels).
    Every other row gives the lens position ``x``,``y`` (the image centre, 95.5, 95.5).
    """
    folder = pathlib.Path(folder)
    sim = write_observed_dataset(folder / "simulated", n=min(distinct, n), seed=seed,
                                 progress=False)
    images = np.load(sim / "images.npy")[..., 0].astype(np.float32)
    (folder / "cutouts").mkdir(parents=True, exist_ok=True)
    with open(folder / "catalog.csv", "w") as f:
        f.write("path,x,y\n")
        for i in range(n):
            name = f"cutouts/lens{i:06d}.npy"
            np.save(folder / name, images[i % len(images)])
            f.write(f"{name},95.5,95.5\n" if i % 2 else f"{name},,\n")
    return folder / "catalog.csv"


def main(argv=None):
    """Run the benchmark; returns 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="cutouts (default 10000)")
    parser.add_argument("--model", default="trained_weights/combined",
                        help="model folder (default trained_weights/combined)")
    parser.add_argument("--batch-size", type=int, default=100, help="images per batch (100)")
    parser.add_argument("--distinct", type=int, default=16,
                        help="distinct simulated lenses the cutouts copy (16)")
    parser.add_argument("--interval", type=float, default=1.0, help="RSS sampling period, s")
    parser.add_argument("--folder", default=None,
                        help="work folder (default a new temporary one, removed at the end)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    folder = pathlib.Path(args.folder or tempfile.mkdtemp(prefix="ensai_catalog_"))
    try:
        start = time.perf_counter()
        cat = write_survey(folder, args.n, args.distinct)
        print(f"wrote {args.n} cutouts and {cat} in {time.perf_counter() - start:.1f} s")
        sampler = RssSampler(args.interval)
        sampler.start()
        print(f"RSS before the run: {vm_rss_mib():.0f} MiB")
        marks = list(MILESTONES)
        t0 = time.perf_counter()

        def progress(done, total):
            while marks and done >= marks[0] * total:
                sampler.peak = max(sampler.peak, vm_rss_mib())
                print(f"{100 * marks.pop(0):3.0f}%: {done}/{total} lenses, "
                      f"{time.perf_counter() - t0:.1f} s, RSS {vm_rss_mib():.0f} MiB "
                      f"(peak sampled so far {sampler.peak:.0f} MiB)", flush=True)

        summary = catalog.predict_catalog(args.model, cat, folder / "out.csv",
                                          batch_size=args.batch_size, progress=progress)
        wall = time.perf_counter() - t0
        sampler.stop()
        print(f"{summary.written} lenses in {wall:.1f} s (model loading included): "
              f"{summary.written / wall:.1f} lenses per second; "
              f"{summary.written / summary.wall_seconds:.1f} per second from the first row "
              f"read; network {1e3 * summary.network_seconds / max(summary.written, 1):.2f} ms "
              f"per lens; {summary.failed} failed")
        print(f"peak RSS: {sampler.peak:.0f} MiB sampled, "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB ru_maxrss; "
              f"output {os.path.getsize(folder / 'out.csv') / 2**20:.1f} MiB")
    finally:
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
