"""TFDS builder ``ensai_lenses``: simulated strong lenses, clean or observed.

Built fully offline from :mod:`ensai_tf.data`:
every example is simulated from ``simulate.example_seeds(seed, split, key)``,
so example ``key`` of a split is the same on every build and equals example
``key`` of :func:`ensai_tf.data.pipeline.make_dataset` for the same config
and seed. Train, validation and test use disjoint seed streams and source
pools (docs/design.md §3.7 [R]); validation and test are observed with the evaluation
rules (f_min 0.98, docs/design.md §5.6), train with the training rules.

Configs (``tfds.builder("ensai_lenses/<name>")``):

- ``clean_tiny`` / ``observed_tiny``: 8/4/4 examples, smoke preset (tests).
- ``clean_small`` / ``observed_small``: 300/200/200 examples, paper physics.
- ``clean`` / ``observed``: paper sizes, 10,000 train (configurable, see
  :func:`make_config`), 1000 validation (docs/design.md §7.3), 10,000 test (docs/design.md §8.3).

User source stamps (FITS/PNG/JPEG) placed in ``manual_dir`` join the
packaged stamp pools, split by file name (``sources.user_stamp_split``).

Two ways to build, with the same examples bit for bit (every example
depends only on its stateless seed, docs/design.md §11 rule 4): in this
process (the default), or with Apache Beam when the build is given a Beam
runner or Beam options (``tfds build ... --beam_pipeline_options=...``,
``python -m ensai_tf.datasets.ensai_lenses ... --beam_pipeline_options=...``,
or ``tfds.download.DownloadConfig(beam_runner=..., beam_options=...)``).
Beam then simulates each split in chunks of :attr:`EnsaiLensesConfig.beam_chunk`
examples spread over its workers (Dataflow, Flink, Spark), so a config of
hundreds of thousands of lenses is built on a cluster (docs/scaling.md).
Apache Beam is optional (``pip install "ensai_tf[beam]"``): it is imported only
by a Beam build.
"""

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from ensai_tf import config as config_lib
from ensai_tf import conventions
from ensai_tf.data import pipeline
from ensai_tf.data.arrays import BULKY_KEYS

__all__ = ["Builder", "EnsaiLensesConfig", "make_config", "CONFIG_SIZES", "examples_in_range"]

CONFIG_SIZES = {
    "tiny": ("smoke", 8, 4, 4),
    "small": ("paper", 300, 200, 200),
    "paper": ("paper", 10_000, 1000, 10_000),
}
"""Variant -> (preset, train, validation, test sizes)."""

_VERSION = tfds.core.Version("1.0.0")
_RELEASE_NOTES = {"1.0.0": "First release: clean and observed configs, tiny/small/paper sizes."}
_KINDS = ("clean", "observed")


@dataclasses.dataclass(eq=False)
class EnsaiLensesConfig(tfds.core.BuilderConfig):
    """A variant of ``ensai_lenses``.

    Attributes:
        kind: ``"clean"`` (noise-free arcs, peak 1, docs/design.md §3) or
            ``"observed"`` (the effect chain of docs/design.md §5).
        preset: :data:`ensai_tf.config.PRESETS` name defining the physics.
        overrides: ``section.key=value`` strings applied to the preset.
        seed: user seed of the example seed streams.
        train_size, validation_size, test_size: examples per split.
        beam_chunk: examples simulated per Beam element in a Beam build
            (one TensorFlow pipeline each); no effect on the examples.
    """

    kind: str = "observed"
    preset: str = "paper"
    overrides: tuple = ()
    seed: int = 0
    train_size: int = 10_000
    validation_size: int = 1000
    test_size: int = 10_000
    beam_chunk: int = 500

    def experiment_config(self, stamp_dir=None):
        """The resolved :class:`ensai_tf.config.ExperimentConfig` of this variant."""
        cfg = config_lib.load_config(preset=self.preset, overrides=self.overrides)
        if stamp_dir is not None:
            cfg = dataclasses.replace(cfg, source=dataclasses.replace(
                cfg.source, stamp_dirs=cfg.source.stamp_dirs + (str(stamp_dir),)))
        return config_lib.validate_config(cfg)


def make_config(kind="observed", variant="paper", train_size=None, name=None, **kwargs):
    """An :class:`EnsaiLensesConfig`, e.g. a paper-size set with 100k train lenses.

    Args:
        kind: ``"clean"`` or ``"observed"``.
        variant: key of :data:`CONFIG_SIZES` giving preset and default sizes.
        train_size: overrides the variant's train size.
        name: config name (default ``kind`` + suffix).
        **kwargs: further :class:`EnsaiLensesConfig` fields.

    Raises:
        ValueError: unknown kind or variant, or a non-positive size.
    """
    if kind not in _KINDS:
        raise ValueError(f"unknown ensai_lenses kind {kind!r}; valid kinds: {', '.join(_KINDS)}")
    if variant not in CONFIG_SIZES:
        raise ValueError(f"unknown ensai_lenses variant {variant!r}; valid variants: "
                         f"{', '.join(CONFIG_SIZES)}")
    preset, n_train, n_val, n_test = CONFIG_SIZES[variant]
    n_train = n_train if train_size is None else int(train_size)
    sizes = dict(train_size=n_train, validation_size=n_val, test_size=n_test)
    sizes.update({k: kwargs.pop(k) for k in list(kwargs) if k in sizes})
    for key, value in {**sizes, "beam_chunk": kwargs.get("beam_chunk", 1)}.items():
        if value < 1:
            raise ValueError(f"ensai_lenses {key} must be >= 1, got {value}")
    suffix = "" if variant == "paper" else f"_{variant}"
    if name is None:
        name = kind + suffix + ("" if train_size is None else f"_{n_train}")
    desc = (f"{kind} lenses, {preset} preset physics; {n_train}/{sizes['validation_size']}/"
            f"{sizes['test_size']} train/validation/test examples")
    return EnsaiLensesConfig(name=name, version=_VERSION, release_notes=_RELEASE_NOTES,
                             description=desc, kind=kind, preset=preset, **sizes, **kwargs)


class Builder(tfds.core.GeneratorBasedBuilder):
    """Simulated strong-lens images with their SIE parameters (Hezaveh et al. 2017)."""

    VERSION = _VERSION
    RELEASE_NOTES = _RELEASE_NOTES
    BUILDER_CONFIGS = [make_config(kind, variant) for variant in CONFIG_SIZES for kind in _KINDS]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Optional. Nothing needs downloading: without a manual folder the packaged source "
        "stamps are used. To add your own source galaxies, put FITS/PNG/JPEG stamps in "
        "manual_dir; they are split into train/validation/test pools by file name.")

    def _element_spec(self):
        """Per-example specs of the stored fields, from the pipeline's own dataset."""
        cfg = self.builder_config.experiment_config()
        ds = pipeline.example_dataset("test", cfg, self.builder_config.seed, count=1,
                                      batch_size=1, observed=self.builder_config.kind == "observed",
                                      training=False, stamps=pipeline.load_stamps("test", cfg))
        return ds.element_spec

    def _info(self):
        spec = self._element_spec()
        npix = int(spec["image"].shape[1])

        def tensor(s):
            return tfds.features.Tensor(shape=tuple(s.shape[1:]), dtype=s.dtype.as_numpy_dtype)

        features = {
            "image": tfds.features.Tensor(shape=(npix, npix, 1), dtype=np.float32,
                                          encoding=tfds.features.Encoding.ZLIB,
                                          doc="observed image (or clean arcs), peak ~1, "
                                              "masked pixels exactly 0; x = column, y = row"),
            "params": tfds.features.Tensor(
                shape=(conventions.NUM_PARAMS,), dtype=np.float32,
                doc=f"labels {conventions.PARAM_NAMES} in {conventions.PARAM_UNITS} (docs/design.md §0)"),
        }
        for key, s in spec.items():
            if key in ("image", "params") + BULKY_KEYS:
                continue
            if key == "draws":
                if s:
                    features["draws"] = tfds.features.FeaturesDict(
                        {k: tensor(v) for k, v in s.items()})
                continue
            features[key] = tensor(s)
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(features),
            supervised_keys=("image", "params"),
            homepage="https://doi.org/10.1038/nature23463",
        )

    def _download_and_prepare(self, dl_manager, download_config=None):
        # a Beam runner or Beam options (tfds' --beam_pipeline_options) ask for the Beam build
        self._use_beam = download_config is not None and (
            download_config.beam_runner is not None or download_config.beam_options is not None)
        return super()._download_and_prepare(dl_manager, download_config)

    def _split_generators(self, dl_manager):
        try:
            stamp_dir = dl_manager.manual_dir
        except AssertionError:  # no manual folder, or an empty one: packaged stamps only
            stamp_dir = None
        c = self.builder_config
        sizes = {"train": c.train_size, "validation": c.validation_size, "test": c.test_size}
        return {split: self._generate_examples(split, n, stamp_dir)
                for split, n in sizes.items()}

    def _generate_examples(self, split, count, stamp_dir):
        """The split's ``(key, example)`` pairs, or the Beam ``PTransform`` making them."""
        stamp_dir = None if stamp_dir is None else str(stamp_dir)
        if getattr(self, "_use_beam", False):
            return _beam_examples(self.builder_config, split, count, stamp_dir)
        return examples_in_range(self.builder_config, split, 0, count, stamp_dir)


def _records(dataset):
    """``(key, example)`` for every example of a batched example-dict dataset."""
    for batch in dataset.as_numpy_iterator():
        for i in range(len(batch["index"])):
            record = {k: (v[i] if not isinstance(v, dict) else {d: a[i] for d, a in v.items()})
                      for k, v in batch.items() if k not in BULKY_KEYS}
            if not record.get("draws", True):
                record.pop("draws")
            yield int(batch["index"][i]), record


def examples_in_range(config, split, start, count, stamp_dir=None):
    """Examples ``start ... start + count - 1`` of a split, as the builder stores them.

    Both builds are made of these: the in-process build takes a split whole,
    a Beam build one chunk of :attr:`EnsaiLensesConfig.beam_chunk` per element.

    Args:
        config: the :class:`EnsaiLensesConfig`.
        split: ``"train"``, ``"validation"`` or ``"test"``.
        start: index of the first example in the split's seed stream.
        count: number of examples.
        stamp_dir: folder of user source stamps (the manual folder), or None.

    Yields:
        ``(key, example)``: the key is the example's index; the example the
        dict of features (bulky arrays such as the arcs and mask left out).
    """
    cfg = config.experiment_config(stamp_dir)
    ds = pipeline.example_dataset(split, cfg, config.seed, count=count, start=start,
                                  observed=config.kind == "observed")
    yield from _records(ds)


def _chunk_examples(start, config, split, count, stamp_dir):
    """One Beam element: the chunk of examples from ``start`` (at most ``beam_chunk``)."""
    yield from examples_in_range(config, split, start, min(config.beam_chunk, count - start),
                                 stamp_dir)


def _beam_examples(config, split, count, stamp_dir):
    """A Beam ``PTransform`` making a split's ``(key, example)`` pairs, chunk by chunk."""
    import apache_beam as beam  # noqa: PLC0415 (optional dependency: only a Beam build needs it)

    starts = list(range(0, count, config.beam_chunk))
    # Reshuffle spreads the chunks over the runner's workers
    return (beam.Create(starts) | beam.Reshuffle()
            | beam.FlatMap(_chunk_examples, config=config, split=split, count=count,
                           stamp_dir=stamp_dir))
