"""``import ensai_tf`` and ``ensai`` print no TensorFlow native log line unless asked to."""

import os
import re
import subprocess
import sys

import pytest

from ensai_tf import quiet

NATIVE = re.compile(r"^[IWEF]\d{4} |cuInit|cuda drivers|oneDNN|absl::InitializeLog", re.M)


def _stderr(code, **env):
    full = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL",
                                                             quiet.VERBOSE_ENV)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env={**full, **env})
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stderr


def test_import_and_first_op_are_quiet():
    err = _stderr("import ensai_tf, tensorflow as tf; print(float(tf.constant(1.0) + 1))")
    assert NATIVE.search(err) is None, err


def test_verbose_keeps_the_native_lines():
    err = _stderr("import ensai_tf", **{quiet.VERBOSE_ENV: "1"})
    assert NATIVE.search(err) is not None


def test_other_native_output_is_replayed(capfd):
    with quiet.native_stderr_filtered():
        os.write(2, b"I0000 00:00:1.5    123 port.cc:153] oneDNN custom operations are on.\n")
        os.write(2, b"a real error from native code\n")
    assert capfd.readouterr().err == "a real error from native code\n"


@pytest.mark.parametrize("line", [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "E0000 00:00:1796597090.245580   17688 cuda_platform.cc:52] failed call to cuInit: INTERNAL",
    "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow "
    "with the appropriate compiler flags.",
])
def test_noise_pattern_matches_the_start_up_notices(line):
    assert quiet.NOISE.match(line)
