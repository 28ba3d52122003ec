"""An exclusive lock on a model folder, so two processes cannot write into it at once.

``ensai train`` and ``ensai combine`` hold :class:`ModelDirLock` on their
output folder for the whole run. The lock is a file, ``.ensai.lock``, created
with ``os.open(O_CREAT | O_EXCL)`` (atomic on local file systems) that holds
the owner's host name and process id. A second process, or a second
acquisition in the same process, is refused with a
:class:`~ensai_tf.errors.ModelDirError` naming the folder and the owner. A
lock left by a process that no longer exists on this host (killed with
SIGKILL, or a power cut) is stale and is taken over.
"""

import json
import os
import pathlib
import socket
import time
import uuid

from ensai_tf.errors import ModelDirError

__all__ = ["LOCK_NAME", "ModelDirLock", "read_lock_owner", "process_alive"]

LOCK_NAME = ".ensai.lock"
"""Name of the lock file inside a locked model folder."""

_FRESH_S = 10.0
"""A lock file still empty or unreadable after this many seconds is stale (its
writer died between creating and filling it)."""


def process_alive(pid):
    """Whether a process with this id exists on this host.

    Args:
        pid: process id.

    Returns:
        True when the process exists (also when it belongs to another user).
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_lock_owner(path):
    """The owner record of a lock file, or None when it is missing, empty or unreadable.

    Args:
        path: the lock file.

    Returns:
        dict with ``pid`` (int), ``host`` (str), ``token`` and ``since``
        (Unix time, seconds), or None.
    """
    try:
        owner = json.loads(pathlib.Path(path).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(owner, dict) or not isinstance(owner.get("pid"), int):
        return None
    return owner


class ModelDirLock:
    """Exclusive lock on a model folder, as a context manager.

    The folder is created if it does not exist; a folder this lock created is
    removed again on release when it is still empty, so a refused command
    leaves nothing behind.

    Args:
        model_dir: the folder to lock.
        command: what the holder is doing, for the second process's message
            (e.g. ``"ensai train"``).

    Raises:
        ModelDirError: on entry, when another live process (or this one)
            holds the folder, or the folder cannot be created.
    """

    def __init__(self, model_dir, command="ensai"):
        self.model_dir = pathlib.Path(model_dir)
        self.path = self.model_dir / LOCK_NAME
        self.command = command
        self._token = None
        self._created_dir = False

    @property
    def held(self):
        """Whether this object holds the lock now."""
        return self._token is not None

    def acquire(self):
        """Take the lock, taking over a stale one; raises ModelDirError if it is in use."""
        if self.held:
            raise ModelDirError(f"model folder {str(self.model_dir)!r} is already locked by "
                                "this process")
        if self.model_dir.exists() and not self.model_dir.is_dir():
            raise ModelDirError(f"model folder {str(self.model_dir)!r} is a file, not a folder")
        if not self.model_dir.exists():
            try:
                self.model_dir.mkdir(parents=True)
                self._created_dir = True
            except FileExistsError:
                pass
            except OSError as err:
                raise ModelDirError(f"cannot create model folder {str(self.model_dir)!r}: "
                                    f"{err.strerror or err}") from None
        token = uuid.uuid4().hex
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "token": token,
                             "since": time.time(), "command": self.command})
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._refuse_or_clear_stale()
                continue
            except OSError as err:
                self._remove_created_dir()
                raise ModelDirError(f"cannot lock model folder {str(self.model_dir)!r}: "
                                    f"{err.strerror or err}") from None
            with os.fdopen(fd, "w") as f:
                f.write(record)
                f.flush()
                os.fsync(f.fileno())
            self._token = token
            return self
        self._remove_created_dir()
        raise ModelDirError(f"cannot lock model folder {str(self.model_dir)!r}: its lock file "
                            f"{LOCK_NAME} keeps reappearing; another process is starting there")

    def _refuse_or_clear_stale(self):
        """Raise if the existing lock belongs to a live process; otherwise remove it."""
        owner = read_lock_owner(self.path)
        if owner is None:
            try:
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                return  # released meanwhile: try again
            if age < _FRESH_S:
                self._in_use("another process (it is starting now)")
        elif owner.get("host") != socket.gethostname():
            self._in_use(f"process {owner['pid']} on host {owner.get('host')!r}")
        elif owner["pid"] == os.getpid():
            self._in_use(f"this process ({owner['pid']})")
        elif process_alive(owner["pid"]):
            self._in_use(f"process {owner['pid']}"
                         + (f" ({owner['command']})" if owner.get("command") else ""))
        # a stale lock: move it aside atomically (only one contender wins), then retry
        aside = self.model_dir / f"{LOCK_NAME}.stale-{uuid.uuid4().hex[:8]}"
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            return
        moved = read_lock_owner(aside)
        if moved is not None and (owner is None or moved.get("token") != owner.get("token")):
            # another contender took the stale lock over first: give its lock back
            try:
                os.link(aside, self.path)
            except OSError:
                pass
            aside.unlink(missing_ok=True)
            self._in_use(f"process {moved['pid']}")
        aside.unlink(missing_ok=True)

    def _in_use(self, who):
        self._remove_created_dir()
        raise ModelDirError(
            f"model folder {str(self.model_dir)!r} is in use by {who}; wait for it to finish or "
            f"stop it, or use another folder (if no such process is running, delete "
            f"{str(self.path)!r})")

    def _remove_created_dir(self):
        if self._created_dir:
            try:
                self.model_dir.rmdir()
            except OSError:
                pass
            self._created_dir = False

    def release(self):
        """Remove the lock file if this object still owns it (idempotent)."""
        if not self.held:
            return
        owner = read_lock_owner(self.path)
        if owner is not None and owner.get("token") == self._token:
            self.path.unlink(missing_ok=True)
        self._token = None
        self._remove_created_dir()

    def __enter__(self):
        return self.acquire()

    def __exit__(self, exc_type, exc, tb):
        self.release()
        return False
