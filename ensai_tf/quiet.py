"""Start TensorFlow without its C++ start-up log lines.

TensorFlow's native code writes several lines to the process's standard error
when it loads and when it first looks for devices (``oneDNN custom operations
are on``, ``Could not find cuda drivers``, ``failed call to cuInit``, the
``absl::InitializeLog`` notice), before and regardless of
``TF_CPP_MIN_LOG_LEVEL``. On a CPU machine they read like failures.
:func:`start_tensorflow` imports TensorFlow and Keras and lists the devices
and runs one op with file descriptor 2 redirected to a temporary file, then writes back every
captured line that is not such a start-up notice, so real errors still show.

``ENSAI_VERBOSE=1`` (``ensai --verbose``) keeps everything.

Example:
    >>> tf = start_tensorflow()
    >>> tf.constant(1.0).dtype.name
    'float32'
"""

import contextlib
import os
import re
import sys
import tempfile

__all__ = ["NOISE", "VERBOSE_ENV", "is_verbose", "native_stderr_filtered", "start_tensorflow"]

VERBOSE_ENV = "ENSAI_VERBOSE"
"""Environment variable that, set to 1, keeps TensorFlow's native log lines."""

NOISE = re.compile(
    r"^(?:[IWEF]\d{4} [\d:. ]+\d+ [\w.]+:\d+\] .*"
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|To enable the following instructions: .*rebuild TensorFlow with the appropriate "
    r"compiler flags\.)$")
"""TensorFlow's native log lines (absl format ``I0000 00:00:... file.cc:12] ...``) and notices."""


def is_verbose():
    """Whether ``ENSAI_VERBOSE`` asks for TensorFlow's native log lines."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes")


@contextlib.contextmanager
def native_stderr_filtered():
    """Capture what native code writes to file descriptor 2, then replay all but :data:`NOISE`.

    Python's ``sys.stderr`` is flushed before and after; lines are replayed in
    their order once the block ends.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", "replace")
        kept = [line for line in text.splitlines() if line and not NOISE.match(line)]
        if kept:
            sys.stderr.write("\n".join(kept) + "\n")
            sys.stderr.flush()


def start_tensorflow():
    """Import TensorFlow and Keras and find the devices, quietly unless verbose.

    Returns:
        The ``tensorflow`` module.
    """
    if "tensorflow" in sys.modules or is_verbose():
        import tensorflow as tf  # noqa: PLC0415  (already loaded, or the user wants its logs)

        return tf
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with native_stderr_filtered():
        import keras  # noqa: F401, PLC0415  (the point of this function is where it imports)
        import tensorflow as tf  # noqa: PLC0415

        tf.config.list_physical_devices()
        if not os.environ.get("TF_CONFIG"):  # a multi-worker run configures TF before any op
            (tf.constant(0.0) + 0.0).numpy()  # the first op prints the CPU-feature notice
    return tf
