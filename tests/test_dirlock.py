"""Tests of ensai_tf.dirlock: one process per model folder, stale locks recovered."""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from ensai_tf import dirlock
from ensai_tf.errors import ModelDirError


def _dead_pid():
    """The id of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_second_acquisition_in_the_same_process_is_refused(tmp_path):
    run = tmp_path / "run"
    with dirlock.ModelDirLock(run, "ensai train") as lock:
        assert lock.held and (run / dirlock.LOCK_NAME).is_file()
        owner = dirlock.read_lock_owner(run / dirlock.LOCK_NAME)
        assert owner["pid"] == os.getpid() and owner["command"] == "ensai train"
        with pytest.raises(ModelDirError, match=r"is in use by this process .*wait for it"):
            dirlock.ModelDirLock(run).acquire()
        assert lock.held  # the refused attempt did not remove the holder's lock
    assert not run.exists()  # the lock made the folder and, left empty, removed it


def test_lock_held_by_another_live_process_is_refused_with_its_pid(tmp_path):
    run = tmp_path / "run"
    script = textwrap.dedent("""
        import sys, time
        from ensai_tf.dirlock import ModelDirLock
        with ModelDirLock(sys.argv[1], "ensai train"):
            print("locked", flush=True)
            sys.stdin.readline()
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    holder = subprocess.Popen([sys.executable, "-c", script, str(run)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ModelDirError) as info:
            dirlock.ModelDirLock(run).acquire()
        message = str(info.value)
        assert f"is in use by process {holder.pid} (ensai train)" in message
        assert str(run) in message and "\n" not in message
    finally:
        holder.communicate("\n", timeout=30)
    assert holder.returncode == 0
    with dirlock.ModelDirLock(run):  # free again once the holder exits
        pass


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / dirlock.LOCK_NAME).write_text(json.dumps(
        {"pid": _dead_pid(), "host": socket.gethostname(), "token": "old", "since": 0}))
    with dirlock.ModelDirLock(run) as lock:
        assert dirlock.read_lock_owner(lock.path)["pid"] == os.getpid()
    assert sorted(p.name for p in run.iterdir()) == []


def test_empty_lock_file_is_busy_while_fresh_and_stale_when_old(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    path = run / dirlock.LOCK_NAME
    path.write_text("")  # a writer that died between creating and filling it, or is filling it
    with pytest.raises(ModelDirError, match="is starting now"):
        dirlock.ModelDirLock(run).acquire()
    old = time.time() - 3600
    os.utime(path, (old, old))
    with dirlock.ModelDirLock(run):
        pass


def test_lock_from_another_host_is_never_taken_over(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / dirlock.LOCK_NAME).write_text(json.dumps(
        {"pid": 1, "host": "elsewhere.invalid", "token": "t", "since": 0}))
    with pytest.raises(ModelDirError, match="process 1 on host 'elsewhere.invalid'"):
        dirlock.ModelDirLock(run).acquire()


def test_lock_removes_the_empty_folder_it_created_only(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with dirlock.ModelDirLock(run):
        pass
    assert run.is_dir() and not any(run.iterdir())  # existed before: kept
    fresh = tmp_path / "fresh"
    lock = dirlock.ModelDirLock(fresh)
    lock.acquire()
    lock.release()
    lock.release()  # idempotent
    assert not fresh.exists()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ModelDirError, match="is a file"):
        dirlock.ModelDirLock(tmp_path / "afile").acquire()


def test_train_refuses_a_locked_model_folder(tmp_path, smoke_config):
    """Before any work: the second `ensai train` names the folder and the holder."""
    from ensai_tf import cli, combine, train

    run = tmp_path / "run"
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "model.keras").write_text("not loaded: the lock is checked first")
    with dirlock.ModelDirLock(run, "ensai train"):
        with pytest.raises(ModelDirError, match="is in use by this process"):
            train.train(smoke_config, run)
        with pytest.raises(ModelDirError, match="is in use by this process"):
            combine.train_combiner([tmp_path / "a"], run, config=smoke_config)
        assert sorted(p.name for p in run.iterdir()) == [dirlock.LOCK_NAME]
        code = cli.main(["train", "--preset", "smoke", "--model-dir", str(run)])
        assert code == 2
