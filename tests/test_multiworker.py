"""Tests of multi-worker training (ensai_tf.distribute, ``ensai train --strategy multi-worker``).

The cluster tests start two real worker processes on 127.0.0.1 (CPU only,
``TF_CONFIG`` per process, free ports) running ``ensai_tf.train.train`` on the
smoke preset at a reduced image size with the tiny test network of
``training_helpers``; the strategy, collectives, pipeline, callbacks and
exports are the real ones. Each two-process run takes one to two minutes
on a 2-core machine (TensorFlow starts twice, a lost worker is noticed by
its heartbeat timeout), so those tests are marked slow.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from ensai_tf import cli, distribute, train
from ensai_tf.errors import InputError
from training_helpers import NPIX, small_config

TESTS = pathlib.Path(__file__).parent

EPOCHS, STEPS = 2, 2
"""The cluster runs: 2 epochs of 2 steps of the global batch of 4 (2 examples per worker)."""

KILL_AT_STEP = 3
"""Worker 1 kills itself after this optimizer step: mid-epoch 2, after the epoch-1 backup."""

# Same examples and ops: the only difference between two workers and one process is the
# float32 summation order of the gradient (two half-batch means, all-reduced, against one
# mean over the batch). A few ulps per step, through 4 Adam steps, stay far below 1e-6 on
# weights of order 0.1-1 (measured: at most 1e-10).
RTOL, ATOL = 1e-5, 1e-6

WORKER = textwrap.dedent('''
    import os, signal, sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    import keras
    import ensai_tf.models
    from training_helpers import small_config, tiny_model
    ensai_tf.models.build_model = tiny_model
    from ensai_tf import train

    model_dir, cache, out, resume, kill_at = sys.argv[1:6]

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if int(kill_at) and int(self.model.optimizer.iterations.numpy()) == int(kill_at):
                os.kill(os.getpid(), signal.SIGKILL)

        def on_train_end(self, logs=None):
            np.savez(out, steps=int(self.model.optimizer.iterations.numpy()),
                     weights=np.array([np.array(w) for w in self.model.get_weights()],
                                      dtype=object))

    cfg = small_config(cache, epochs={epochs}, steps={steps})
    train.train(cfg, model_dir, resume=resume == "1", strategy="multi-worker", verbose=0,
                callbacks=[Record()])
''').format(tests=str(TESTS), epochs=EPOCHS, steps=STEPS)


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def run_cluster(root, name, cache, resume=False, kill_at=0, tmp_name=None):
    """Two workers training into ``root/run``; worker 1 may SIGKILL itself after ``kill_at``.

    Worker ``i`` gets ``root/<tmp_name or name>-tmp<i>`` as its ``TMPDIR``.

    Returns:
        list of two ``subprocess.CompletedProcess``-like results, worker 0 (the chief) first,
        each with ``returncode``, ``stdout``, ``stderr``, ``out`` (its weights file) and
        ``tmp`` (its TMPDIR).
    """
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    procs = []
    for index in range(2):
        tmp = root / f"{tmp_name or name}-tmp{index}"
        tmp.mkdir(parents=True, exist_ok=True)
        out = root / f"{name}-weights{index}.npz"
        env = dict(os.environ, TMPDIR=str(tmp), TF_CPP_MIN_LOG_LEVEL="2",
                   TF_CONFIG=json.dumps({"cluster": cluster,
                                         "task": {"type": "worker", "index": index}}))
        env.pop("ENSAI_VERBOSE", None)
        args = [sys.executable, "-c", WORKER, str(root / "run"), str(cache), str(out),
                "1" if resume else "0", str(kill_at if index == 1 else 0)]
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        procs.append((proc, out, tmp))
    results = []
    for proc, out, tmp in procs:
        stdout, stderr = proc.communicate(timeout=600)
        proc.out, proc.tmp, proc.stdout_text, proc.stderr_text = out, tmp, stdout, stderr
        results.append(proc)
    return results


def _weights(path):
    data = np.load(path, allow_pickle=True)
    return int(data["steps"]), list(data["weights"])


def _log(folder):
    return np.genfromtxt(folder / "log.csv", delimiter=",", names=True)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, cache):
    """The same training in one process: its folder and final weights."""
    root = tmp_path_factory.mktemp("one")

    class Record(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            self.steps = int(self.model.optimizer.iterations.numpy())
            self.weights = [np.array(w) for w in self.model.get_weights()]

    record = Record()
    with pytest.MonkeyPatch.context() as patch:
        from training_helpers import tiny_model
        import ensai_tf.models
        patch.setattr(ensai_tf.models, "build_model", tiny_model)
        train.train(small_config(cache, epochs=EPOCHS, steps=STEPS), root / "run", verbose=0,
                    callbacks=[record])
    return root / "run", record.steps, record.weights


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory, cache, one_process):
    """An uninterrupted two-worker run (after ``one_process``, which builds the data cache)."""
    root = tmp_path_factory.mktemp("two")
    return root, run_cluster(root, "plain", cache)


# ------------------------------------------------------------------ TF_CONFIG and the chief


def _env(cluster, task_type, index):
    return {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": task_type,
                                                                  "index": index}})}


def test_the_chief_is_the_chief_task_else_worker_0():
    workers = {"worker": ["a:1", "b:1", "c:1"]}
    assert [distribute.read_tf_config(_env(workers, "worker", i)).is_chief
            for i in range(3)] == [True, False, False]
    with_chief = {"chief": ["a:1"], "worker": ["b:1", "c:1"]}
    tasks = [distribute.read_tf_config(_env(with_chief, t, i))
             for t, i in (("chief", 0), ("worker", 0), ("worker", 1))]
    assert [t.is_chief for t in tasks] == [True, False, False]
    assert {t.num_workers for t in tasks} == {3}
    assert tasks[2].name == "worker 1"


@pytest.mark.parametrize("text, words", [
    (None, "TF_CONFIG environment variable"),
    ("", "TF_CONFIG environment variable"),
    ("{not json", "not JSON"),
    ('["worker"]', '"cluster" object'),
    ('{"cluster": {"worker": []}, "task": {"type": "worker", "index": 0}}', "non-empty list"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "ps", "index": 0}}', "cannot train"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}',
     "not a job of the cluster"),
    ('{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 2}}',
     "task index 2"),
    ('{"cluster": {"chief": ["a:1", "b:1"]}, "task": {"type": "chief", "index": 0}}',
     "at most one chief"),
])
def test_a_missing_or_malformed_tf_config_is_one_line(text, words):
    env = {} if text is None else {"TF_CONFIG": text}
    with pytest.raises(InputError, match=words) as err:
        distribute.read_tf_config(env)
    assert "\n" not in str(err.value)


def test_cli_multi_worker_without_tf_config_is_one_line_and_writes_nothing(tmp_path, monkeypatch,
                                                                          capsys):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    run = tmp_path / "run"
    code = cli.main(["train", "--preset", "smoke", "--model", "alexnet", "--model-dir", str(run),
                     "--strategy", "multi-worker"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert err.startswith("ensai train: error: --strategy multi-worker needs the TF_CONFIG")
    assert not run.exists()


def test_cli_strategy_names_are_the_distribute_ones_and_distribute_is_an_alias(tmp_path,
                                                                               monkeypatch, capsys):
    parser = cli.build_parser()
    for name in distribute.STRATEGIES:
        args = parser.parse_args(["train", "--model-dir", "d", "--strategy", name])
        assert args.strategy == name
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--model-dir", "d", "--strategy", "parameter-server"])
    seen = []
    monkeypatch.setattr(train, "train", lambda cfg, model_dir, **kwargs: seen.append(kwargs))
    assert cli.main(["train", "--preset", "smoke", "--model-dir", str(tmp_path / "a"),
                     "--distribute", "mirrored"]) == 0
    assert seen[-1]["strategy"] == "mirrored"
    assert "--distribute is deprecated; use --strategy" in capsys.readouterr().err
    assert cli.main(["train", "--preset", "smoke", "--model-dir", str(tmp_path / "b"),
                     "--strategy", "multi-worker", "--distribute", "mirrored"]) == 2
    assert "disagree" in capsys.readouterr().err
    assert len(seen) == 1


def test_train_keeps_distribute_as_a_deprecated_name(tmp_path):
    with pytest.warns(DeprecationWarning, match="use strategy="):
        with pytest.raises(InputError, match="disagree"):
            train.train(small_config(tmp_path), tmp_path / "run", strategy="mirrored",
                        distribute="multi-worker")


# ------------------------------------------------------------------ the split of the global batch


SPLIT = textwrap.dedent('''
    import sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from ensai_tf import config, distribute
    from ensai_tf.data.pipeline import make_dataset, pregenerate_arcs
    from ensai_tf.errors import InputError
    cfg = config.apply_overrides(config.get_preset("smoke"),
                                 ["image.npix={npix}", "data.cache_dir=" + sys.argv[1]])
    strategy = distribute.make_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 2
    local = strategy.experimental_local_results
    ref = make_dataset("train", cfg, start_step=3).take(2)
    for (x, y), (rx, ry) in zip(distribute.training_dataset(strategy, cfg, start_step=3), ref):
        assert [len(v) for v in local(x)] == [2, 2]
        assert np.array_equal(np.concatenate(local(x)), rx), "images differ"
        assert np.array_equal(np.concatenate(local(y)), ry), "labels differ"
    val = lambda: make_dataset("validation", cfg)
    batches = list(distribute.replicated_dataset(strategy, val))
    for (x, y), (rx, ry) in zip(batches, val()):
        assert all(np.array_equal(v, rx) for v in local(x))
        assert all(np.array_equal(v, ry) for v in local(y))
    assert len(batches) == len(list(val()))
    # the same with stored arcs observed online (data.arcs_dir): 6 arcs, batches of 4 wrap around
    arcs = pregenerate_arcs(sys.argv[1] + "/arcs", 6, config=cfg, progress=False)
    stored = config.apply_overrides(cfg, ["data.arcs_dir=" + str(arcs)])
    ref = make_dataset("train", stored, start_step=1).take(3)
    for (x, y), (rx, ry) in zip(distribute.training_dataset(strategy, stored, start_step=1), ref):
        assert np.array_equal(np.concatenate(local(x)), rx), "stored-arc images differ"
        assert np.array_equal(np.concatenate(local(y)), ry), "stored-arc labels differ"
    odd = config.apply_overrides(cfg, ["train.batch_size=3"])
    try:
        distribute.training_dataset(strategy, odd)
    except InputError as err:
        print("refused:", err)
    print("split ok")
''').format(npix=NPIX)


def test_each_replica_simulates_its_part_of_the_global_batch_bit_for_bit(tmp_path):
    """Two replicas: their batches of 2, side by side, are the one-process batch of 4 exactly,
    at a resumed step too, simulated online or observed from stored arcs; each replica reads
    every validation batch (MirroredStrategy on two logical CPUs, the same input functions as
    the multi-worker run)."""
    out = subprocess.run([sys.executable, "-c", SPLIT, str(tmp_path / "cache")],
                         capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "split ok" in out.stdout
    assert "refused: train.batch_size 3 cannot be split evenly over 2 replicas" in out.stdout


# ------------------------------------------------------------------ two worker processes


@pytest.mark.slow
def test_two_workers_train_like_one_process_and_only_the_chief_writes(two_workers, one_process):
    root, (chief, worker) = two_workers
    assert chief.returncode == 0, chief.stderr_text[-3000:]
    assert worker.returncode == 0, worker.stderr_text[-3000:]
    run, steps, weights = one_process
    # the run folder holds exactly what a one-process run leaves, written by the chief
    assert sorted(p.name for p in (root / "run").iterdir()) == sorted(p.name for p in run.iterdir())
    assert (root / "run" / "model.keras").is_file()
    assert "ensai train: trained" in chief.stdout_text
    assert "ensai train: trained" not in worker.stdout_text
    # the other worker trained in a scratch folder under its TMPDIR, deleted at the end
    assert f"this worker writes {worker.tmp}" in worker.stdout_text
    assert not list(worker.tmp.glob("ensai-train-*"))
    for proc in (chief, worker):
        got_steps, got = _weights(proc.out)
        assert got_steps == steps == EPOCHS * STEPS
        for a, b in zip(weights, got):
            np.testing.assert_allclose(b, a, rtol=RTOL, atol=ATOL)
    ours, theirs = _log(root / "run"), _log(run)
    assert list(ours["epoch"]) == list(theirs["epoch"]) == list(range(EPOCHS))
    np.testing.assert_allclose(ours["loss"], theirs["loss"], rtol=1e-6)
    np.testing.assert_allclose(ours["val_loss"], theirs["val_loss"], rtol=1e-6)


@pytest.mark.slow
def test_a_killed_worker_fails_the_run_and_resuming_both_ends_as_uninterrupted(
        tmp_path, cache, two_workers):
    chief, worker = run_cluster(tmp_path, "killed", cache, kill_at=KILL_AT_STEP, tmp_name="k")
    assert list(worker.tmp.glob("ensai-train-worker1-*"))  # a killed worker leaves its scratch
    assert worker.returncode == -signal.SIGKILL
    assert chief.returncode != 0
    assert "multi-worker training stopped on worker 0: another worker failed" in chief.stderr_text
    assert "start every worker again with --resume" in chief.stderr_text
    backup = json.loads((tmp_path / "run" / "backup" / "training_metadata.json").read_text())
    assert backup["epoch"] == 1
    assert not (tmp_path / "run" / "model.keras").exists()

    chief, worker = run_cluster(tmp_path, "resumed", cache, resume=True, tmp_name="k")
    assert chief.returncode == 0, chief.stderr_text[-3000:]
    assert worker.returncode == 0, worker.stderr_text[-3000:]
    assert "resuming" in chief.stdout_text and "after epoch 1" in chief.stdout_text
    assert not list(worker.tmp.glob("ensai-train-*"))  # its own, and the killed worker's
    root, (plain_chief, _) = two_workers
    plain_steps, plain = _weights(plain_chief.out)
    for proc in (chief, worker):
        steps, got = _weights(proc.out)
        assert steps == plain_steps
        for a, b in zip(plain, got):
            np.testing.assert_allclose(b, a, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(_log(tmp_path / "run")["val_loss"], _log(root / "run")["val_loss"],
                               rtol=1e-6)


@pytest.mark.slow
def test_a_run_the_chief_refuses_stops_every_worker_and_leaves_the_folder_alone(tmp_path, cache):
    """A non-empty folder without --resume or --overwrite: the chief says why, the other worker
    that the chief could not start, both at once; nothing is written and no lock is left."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    chief, worker = run_cluster(tmp_path, "refused", cache)
    assert chief.returncode != 0 and worker.returncode != 0
    assert f"model folder {str(run)!r} is not empty" in chief.stderr_text
    assert f"the chief could not start the run in {str(run)!r}" in worker.stderr_text
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]
    assert not list(worker.tmp.glob("ensai-train-*"))
