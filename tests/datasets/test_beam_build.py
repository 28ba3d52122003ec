"""Tests of the Apache Beam build of the ``ensai_lenses`` TFDS builder.

A Beam build (DirectRunner, in this process) of a tiny config, simulated in
chunks of 5 examples, must store bit for bit the examples of the in-process
build: every feature of every example, matched by key. The default test
uses the cheap stateless ring simulator of ``tests/data/fake_simulator.py``
with the real observation chain; the slow one the real simulator. Without
Apache Beam the in-process build still works and a Beam build says what
to install.
"""

import pathlib
import sys

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from ensai_tf.datasets import ensai_lenses  # noqa: E402  (registers the builder)
from ensai_tf.datasets.ensai_lenses import __main__ as build_main  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "data"))
from fake_simulator import install as install_fake_simulator  # noqa: E402  (in tests/data/)

SPLITS = ("train", "validation", "test")


def _flat(example, prefix=""):
    out = {}
    for key, value in example.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}/"))
        else:
            out[prefix + key] = np.asarray(value)
    return out


def _examples(builder):
    """``{(split, key): {feature: array}}`` of a prepared builder."""
    return {(split, int(ex["index"])): _flat(ex) for split in SPLITS
            for ex in builder.as_dataset(split=split).as_numpy_iterator()}


def _chunked_config(kind="observed"):
    # 8/4/4 examples in chunks of 5: train has a short last chunk (one TF pipeline per chunk)
    return ensai_lenses.make_config(kind, "tiny", name=f"{kind}_tiny_chunk5", beam_chunk=5)


def _assert_bitwise_equal(in_process, beam):
    assert sorted(in_process) == sorted(beam)
    assert len(in_process) == 8 + 4 + 4
    for key, features in in_process.items():
        other = beam[key]
        assert sorted(features) == sorted(other), key
        for name, value in features.items():
            assert value.dtype == other[name].dtype and value.shape == other[name].shape, \
                (key, name)
            assert value.tobytes() == other[name].tobytes(), (key, name)


def _build_both(tmp_path, config):
    from apache_beam.options.pipeline_options import PipelineOptions

    in_process = ensai_lenses.Builder(config=config, data_dir=str(tmp_path / "in_process"))
    in_process.download_and_prepare()
    beam = ensai_lenses.Builder(config=config, data_dir=str(tmp_path / "beam"))
    beam.download_and_prepare(download_config=tfds.download.DownloadConfig(
        beam_options=PipelineOptions(["--runner=DirectRunner"])))
    return in_process, beam


def test_direct_runner_build_is_the_in_process_build_bit_for_bit(tmp_path, monkeypatch):
    pytest.importorskip("apache_beam")
    install_fake_simulator(monkeypatch)
    in_process, beam = _build_both(tmp_path, _chunked_config())
    assert {s: beam.info.splits[s].num_examples for s in SPLITS} == \
        {"train": 8, "validation": 4, "test": 4}
    examples = _examples(in_process)
    assert {"image", "params", "seed", "draws/shift_x_pix"} <= set(examples[("test", 0)])
    _assert_bitwise_equal(examples, _examples(beam))


@pytest.mark.slow
def test_direct_runner_build_with_the_real_simulator_is_bit_for_bit(tmp_path):
    pytest.importorskip("apache_beam")
    in_process, beam = _build_both(tmp_path, _chunked_config())
    _assert_bitwise_equal(_examples(in_process), _examples(beam))


def test_the_module_command_builds_a_train_size_with_beam_pipeline_options(tmp_path, monkeypatch,
                                                                           capsys):
    pytest.importorskip("apache_beam")
    install_fake_simulator(monkeypatch)
    builder = build_main.main(["--config", "clean_tiny", "--data_dir", str(tmp_path),
                               "--train_size", "5",
                               "--beam_pipeline_options", "runner=DirectRunner"])
    assert "ensai_lenses/clean_tiny_5/1.0.0 train: 5 examples" in capsys.readouterr().out
    assert builder.builder_config.preset == "smoke"
    images = np.stack([e["image"] for e in builder.as_dataset(split="train").as_numpy_iterator()])
    assert len(images) == 5
    np.testing.assert_array_equal(images.max(axis=(1, 2, 3)), 1.0)


def test_without_apache_beam_the_in_process_build_works_and_beam_says_what_to_install(
        tmp_path, monkeypatch, capsys):
    install_fake_simulator(monkeypatch)
    monkeypatch.setitem(sys.modules, "apache_beam", None)  # `import apache_beam` fails
    monkeypatch.setitem(sys.modules, "apache_beam.options.pipeline_options", None)
    builder = ensai_lenses.Builder(config=_chunked_config("clean"), data_dir=str(tmp_path / "a"))
    builder.download_and_prepare()
    assert builder.info.splits["test"].num_examples == 4
    with pytest.raises(SystemExit):
        build_main.main(["--config", "clean_tiny", "--data_dir", str(tmp_path / "b"),
                         "--beam_pipeline_options", "runner=DirectRunner"])
    assert 'needs Apache Beam: pip install "ensai_tf[beam]"' in capsys.readouterr().err
    with pytest.raises(ImportError):
        ensai_lenses.Builder(config=_chunked_config("clean"), data_dir=str(tmp_path / "c")) \
            .download_and_prepare(download_config=tfds.download.DownloadConfig(
                beam_runner="DirectRunner"))


def test_beam_chunk_must_be_positive():
    with pytest.raises(ValueError, match="beam_chunk must be >= 1"):
        ensai_lenses.make_config("observed", "tiny", beam_chunk=0)
