"""Tests of the TFDS builder ``ensai_lenses``.

The default tests build the ``*_tiny`` configs (8/4/4 examples) with the
ray-tracing simulator replaced by a cheap stateless ring generator, so the
TFDS plumbing (registration, features, offline build, loading by name) is
checked in seconds; the real simulator builds ``observed_small`` in the slow
test. Sockets are disabled while building, so any download attempt fails.
"""

import importlib.util
import pathlib
import socket

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from ensai_tf.data import pipeline  # noqa: E402
from ensai_tf.datasets import ensai_lenses  # noqa: E402  (registers the builder)



def _load_fakes():
    """tests/data/fake_simulator.py (tests are not a package)."""
    path = pathlib.Path(__file__).resolve().parents[1] / "data" / "fake_simulator.py"
    spec = importlib.util.spec_from_file_location("_ensai_fake_simulator", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def fake_simulator(monkeypatch):
    _load_fakes().install(monkeypatch)


@pytest.fixture
def offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted during an offline TFDS build")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_configs_are_registered_with_the_documented_sizes():
    assert "ensai_lenses" in tfds.list_builders()
    names = {c.name: c for c in ensai_lenses.Builder.BUILDER_CONFIGS}
    assert set(names) == {"clean_tiny", "observed_tiny", "clean_small", "observed_small",
                          "clean", "observed"}
    paper = names["observed"]
    assert (paper.validation_size, paper.test_size) == (1000, 10_000)  # docs/design.md §7.3, §8.3
    assert ensai_lenses.make_config("observed", train_size=50_000).train_size == 50_000
    with pytest.raises(ValueError, match="unknown ensai_lenses kind"):
        ensai_lenses.make_config("noisy")


def test_observed_tiny_builds_offline_and_loads_by_name(fake_simulator, offline, tmp_path):
    builder = tfds.builder("ensai_lenses/observed_tiny", data_dir=str(tmp_path))
    builder.download_and_prepare()
    loaded = tfds.builder("ensai_lenses/observed_tiny", data_dir=str(tmp_path))
    assert {s: loaded.info.splits[s].num_examples for s in ("train", "validation", "test")} == \
        {"train": 8, "validation": 4, "test": 4}
    examples = list(loaded.as_dataset(split="test").as_numpy_iterator())
    examples.sort(key=lambda e: int(e["index"]))
    assert examples[0]["image"].shape == (192, 192, 1)
    assert examples[0]["image"].dtype == np.float32
    assert examples[0]["params"].shape == (5,)
    assert {"seed", "magnification", "clean_params"} <= set(examples[0])
    assert "shift_x_pix" in examples[0]["draws"]
    # example k of the TFDS test split is example k of the pipeline's test stream
    again = pipeline.recreate_examples("test", [0, 3], builder.builder_config.experiment_config(),
                                       observed=False)
    np.testing.assert_array_equal(examples[0]["seed"], again["seed"][0])
    np.testing.assert_array_equal(examples[3]["clean_params"], again["params"][1])
    x, y = next(iter(loaded.as_dataset(split="train", as_supervised=True, batch_size=4)))
    assert x.shape == (4, 192, 192, 1) and y.shape == (4, 5)


def test_clean_tiny_holds_peak_one_arcs(fake_simulator, offline, tmp_path):
    builder = tfds.builder("ensai_lenses/clean_tiny", data_dir=str(tmp_path))
    builder.download_and_prepare()
    images = np.stack([e["image"] for e in builder.as_dataset(split="validation")
                       .as_numpy_iterator()])
    np.testing.assert_array_equal(images.max(axis=(1, 2, 3)), 1.0)  # docs/design.md §3.5: peak exactly 1
    assert images.min() >= 0.0


@pytest.mark.slow
def test_observed_small_builds_with_the_real_simulator(offline, tmp_path):
    builder = tfds.builder("ensai_lenses/observed_small", data_dir=str(tmp_path))
    builder.download_and_prepare()
    assert builder.info.splits["train"].num_examples == 300
    assert builder.info.splits["test"].num_examples == 200
