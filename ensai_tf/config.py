"""Experiment configuration: frozen dataclasses, named presets, YAML and overrides.

Every physical default is the [R] value of docs/design.md and cites its section. A config
is a tree of frozen dataclasses gathered in :class:`ExperimentConfig`; presets
are functions returning one; YAML files and ``section.key=value`` overrides
are applied with :func:`dataclasses.replace`. Unknown keys and invalid values
raise :class:`ConfigError`, whose message names the key, the value and what is
allowed.

Ranges are ``(low, high)`` tuples; their bounds are validated from each
field's metadata, so adding a field with :func:`_range` or :func:`_value` is
all that is needed for it to be checked.
"""

import dataclasses
import math
import os
import pathlib

import yaml

from ensai_tf import atomic
from ensai_tf import conventions
from ensai_tf.errors import EnsaiError

__all__ = [
    "ConfigError",
    "ImageConfig",
    "LensPrior",
    "SourceConfig",
    "SimulateConfig",
    "ObserveConfig",
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "EvalConfig",
    "ExperimentConfig",
    "PRESETS",
    "get_preset",
    "load_config",
    "save_config",
    "config_to_dict",
    "config_from_dict",
    "apply_overrides",
    "validate_config",
    "valid_keys",
    "target_count",
]


class ConfigError(EnsaiError, ValueError):
    """An unknown key or an invalid value in a configuration."""


def _range(default, lo=None, hi=None, lo_open=False, hi_open=False, integer=False, doc=""):
    """A ``(low, high)`` field whose bounds are checked by :func:`validate_config`."""
    return dataclasses.field(
        default=tuple(default),
        metadata={"kind": "range", "lo": lo, "hi": hi, "lo_open": lo_open,
                  "hi_open": hi_open, "integer": integer, "doc": doc},
    )


def _value(default, lo=None, hi=None, lo_open=False, hi_open=False, choices=None, doc=""):
    """A scalar field whose bounds or choices are checked by :func:`validate_config`."""
    return dataclasses.field(
        default=default,
        metadata={"kind": "value", "lo": lo, "hi": hi, "lo_open": lo_open,
                  "hi_open": hi_open, "choices": choices, "doc": doc},
    )


def _prob(default, doc=""):
    return _value(default, lo=0.0, hi=1.0, doc=doc)


@dataclasses.dataclass(frozen=True)
class ImageConfig:
    """Output image geometry (docs/design.md §0)."""

    npix: int = _value(conventions.NPIX, lo=8, doc="image side, pixels")
    pixel_scale: float = _value(conventions.PIXEL_SCALE, lo=0.0, lo_open=True,
                                doc="pixel side, arcsec")


@dataclasses.dataclass(frozen=True)
class LensPrior:
    """Prior of the SIE lens and the optional external shear (docs/design.md §3.1, §2.2)."""

    theta_e: tuple = _range((0.1, 3.0), lo=0.0, doc="Einstein radius, arcsec (§3.1)")
    epsilon: tuple = _range((0.0, 0.9), lo=0.0, hi=1.0, hi_open=True,
                            doc="eps = 1 - q, dimensionless; must stay below 1 (§3.1)")
    phi_deg: tuple = _range((0.0, 360.0), doc="ellipticity angle phi, degrees (§3.1)")
    center: tuple = _range((-0.05, 0.05), doc="lens centre per axis, arcsec (§3.1)")
    shear: bool = _value(False, doc="add external shear (§2.2 [R]: off by default)")
    shear_gamma: tuple = _range((0.0, 0.3), lo=0.0, hi=1.0, hi_open=True,
                                doc="shear magnitude gamma (§2.2 [R])")
    shear_angle_deg: tuple = _range((0.0, 180.0), doc="shear angle phi_gamma, degrees")


@dataclasses.dataclass(frozen=True)
class SourceConfig:
    """Source families and their placement (docs/design.md §3.2, §3.3)."""

    family_weights: tuple = _range((1.0, 1.0, 1.0), lo=0.0,
                                   doc="relative weights of (clumpy, stamp, sersic) (§3.7)")
    stamp_scale: tuple = _range((0.2, 1.0), lo=0.0, doc="stamp half-side s, arcsec (§3.1)")
    taper_radius: float = _value(0.6, lo=0.0, lo_open=True,
                                 doc="taper radius, stamp units (§3.2)")
    stamp_dirs: tuple = dataclasses.field(
        default=(), metadata={"kind": "dirs", "doc": "user source-stamp folders (FITS/PNG/JPEG)"})
    rule_a_prob: float = _prob(0.5, doc="probability of rule A placement (§3.3)")
    caustic_pad: float = _value(0.15, lo=0.0, doc="rule A outward push, arcsec (§3.3)")
    cut_shrink: float = _value(0.7, lo=0.0, hi=1.0, lo_open=True,
                               doc="rule B shrink factor of the cut (§3.3)")
    clump_count: tuple = _range((1, 5), lo=1, integer=True, doc="clumps per clumpy source (§3.2)")
    clump_sersic_n: tuple = _range((1.0, 5.0), lo=0.2, doc="clump Sersic index (§3.2 [R])")
    clump_r_eff: tuple = _range((0.1, 0.2), lo=0.0, doc="clump effective radius, arcsec")
    clump_epsilon: tuple = _range((0.0, 0.4), lo=0.0, hi=1.0, hi_open=True,
                                  doc="clump ellipticity 1 - q")
    clump_gauss_sigma: tuple = _range((0.01, 0.11), lo=0.0, doc="Gaussian clump sigma, arcsec")
    clump_sersic_prob: float = _prob(0.5, doc="probability a clump is Sersic, else Gaussian "
                                              "(§3.2 [R])")
    sersic_n: tuple = _range((0.5, 4.0), lo=0.2, doc="parametric Sersic index (invented)")
    sersic_r_eff: tuple = _range((0.05, 0.4), lo=0.0, doc="parametric Sersic R_eff, arcsec")
    sersic_epsilon: tuple = _range((0.0, 0.6), lo=0.0, hi=1.0, hi_open=True,
                                   doc="parametric Sersic ellipticity 1 - q")


@dataclasses.dataclass(frozen=True)
class SimulateConfig:
    """Ray tracing and acceptance of the noise-free generator (docs/design.md §3.4, §3.5, §4)."""

    oversample: int = _value(2, lo=1, doc="ray-trace sub-pixels per output pixel per axis (§3.4 [R])")
    field_factor: float = _value(1.6, lo=1.0, doc="ray-traced field / output field (§3.4)")
    min_magnification: float = _value(2.0, lo=0.0, doc="acceptance: magnification >= this (§3.5)")
    min_containment: float = _value(0.99, lo=0.0, hi=1.0,
                                    doc="acceptance: flux fraction inside the field (§3.5)")
    max_attempts: int = _value(64, lo=1, doc="candidates per example before giving up")
    lens_light: bool = _value(False, doc="add Sersic lens light (§4 [R]: off by default)")
    lens_light_n: tuple = _range((2.0, 6.0), lo=0.2, doc="lens-light Sersic index (§4 [R])")
    lens_light_r_eff: tuple = _range((0.3, 2.0), lo=0.0, doc="lens-light R_eff, arcsec (§4 [R])")
    lens_light_amplitude: tuple = _range((0.3, 10.0), lo=0.0, lo_open=True,
                                         doc="lens-light peak / arc peak, log-uniform (§4 [R])")
    lens_light_q_jitter: float = _value(0.1, lo=0.0, doc="lens-light q = mass q + U(-j, j), "
                                                         "clipped to [0.3, 1] (§4 [R])")
    lens_light_pa_sigma_deg: float = _value(10.0, lo=0.0, doc="lens-light PA scatter about the "
                                                              "mass major axis, degrees (§4 [R])")
    placement_candidates: int = _value(16, lo=1, doc="source positions drawn at once per "
                                                     "candidate; first inside wins (§3.3 [R])")
    source_pixels: int = _value(128, lo=4, doc="side of the rendered source-plane image, "
                                               "pixels (§3.2 step 4)")


@dataclasses.dataclass(frozen=True)
class ObserveConfig:
    """Observational effects applied to the noise-free arcs (docs/design.md §5)."""

    shift_pix: tuple = _range((-7, 6), integer=True, doc="target lens-centre pixel (§5.2)")
    shift_min_flux: float = _value(0.98, lo=0.0, hi=1.0, doc="flux kept by a shift (§5.2)")
    psf: str = _value("gaussian", choices=("gaussian", "file", "airy"),
                      doc="PSF family (§5.3 step 1, §8.5)")
    psf_file: str = _value("", doc="PSF image (.fits or .npy) when psf = 'file'")
    psf_prob: float = _prob(0.8, doc="§5.3 step 1")
    psf_sigma_pix: tuple = _range((0.1, 2.5), lo=0.0, lo_open=True, doc="Gaussian PSF sigma, pixels")
    poisson_prob: float = _prob(0.8, doc="§5.3 step 2")
    poisson_counts: tuple = _range((100.0, 1000.0), lo=0.0, lo_open=True,
                                   doc="counts per unit peak c (§9 #2)")
    cosmic_prob: float = _prob(0.8, doc="§5.3 step 3")
    cosmic_scale: tuple = _range((0.0, 0.5), lo=0.0, doc="cosmic-ray map scale (§5.5)")
    noise_rms: tuple = _range((0.01, 0.1), lo=0.0, doc="Gaussian noise rms / peak (§5.3 step 4)")
    coloured_noise_prob: float = _prob(0.75, doc="§5.3 step 4")
    noise_spectrum: str = _value("", doc="measured noise spectrum (.npy); '' = drizzle model (§5.4)")
    mask_prob: float = _prob(0.5, doc="§5.6")
    mask_count: tuple = _range((1, 29), lo=0, integer=True, doc="masks per image (§5.6)")
    mask_radius_arcsec: float = _value(0.2, lo=0.0, doc="mask disc radius, arcsec (§5.6)")
    mask_min_flux_frac: float = _value(0.75, lo=0.0, hi=1.0, doc="train f_min (§5.6)")
    eval_mask_min_flux_frac: float = _value(0.98, lo=0.0, hi=1.0, doc="validation/test f_min")
    mask_max_tries: int = _value(100, lo=1, doc="mask resampling cap (§5.6 [R])")
    norm_threshold: float = _value(0.4, lo=0.0, doc="arc level defining the normalising max (§5.7)")
    norm_jitter_rms: float = _value(0.05, lo=0.0, doc="§9 #5")
    zero_bias_rms: float = _value(0.05, lo=0.0, doc="§5.3 step 7")
    shift_candidates: int = _value(16, lo=1, doc="shift offsets drawn at once; first with "
                                                 ">= shift_min_flux kept wins (§5.2 [R])")
    psf_airy_fwhm_arcsec: float = _value(0.07, lo=0.0, lo_open=True,
                                         doc="Airy core FWHM, arcsec (psf = 'airy', §8.5 [R])")
    psf_halo_fraction: float = _value(0.1, lo=0.0, hi=1.0,
                                      doc="light in the Moffat halo (psf = 'airy', §8.5 [R])")
    psf_halo_fwhm_arcsec: float = _value(0.3, lo=0.0, lo_open=True,
                                         doc="Moffat halo FWHM, arcsec (beta 2.5; §8.5 [R])")
    poisson_exact_below: float = _value(1e6, lo=0.0, doc="expected counts below which Poisson "
                                                         "is exact, N(lam, lam) above; default: "
                                                         "exact everywhere (§5.3 step 2)")
    cosmic_ray_count: tuple = _range((0, 20), lo=0, integer=True, doc="rays per map (§5.5 [R])")
    cosmic_ray_length: tuple = _range((1, 20), lo=1, integer=True, doc="pixels per ray (§5.5 [R])")
    cosmic_ray_value: tuple = _range((0.3, 1.0), lo=0.0, doc="ray pixel values (§5.5 [R])")
    hot_pixel_count: tuple = _range((0, 100), lo=0, integer=True, doc="hot pixels (§5.5 [R])")
    hot_pixel_value: tuple = _range((0.1, 1.0), lo=0.0, doc="hot pixel values (§5.5 [R])")
    mask_chunk: int = _value(5, lo=1, doc="mask tries evaluated per vectorised chunk (§5.6)")
    max_redraws: int = _value(4, lo=0, doc="redraws of non-finite examples (§9 #23 [R])")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Dataset sizes, seeds and caches (docs/design.md §3.7)."""

    seed: int = _value(0, lo=0, doc="user offset added to every split seed")
    val_size: int = _value(1000, lo=1, doc="fixed validation examples (§7.3)")
    test_size: int = _value(10000, lo=1, doc="fixed test examples (§8.3)")
    cache_dir: str = _value("", doc="where validation/test caches go; '' = ~/.cache/ensai_tf")
    arcs_dir: str = _value("", doc="pre-generated noise-free arcs; '' = simulate online")
    sim_batch_size: int = _value(32, lo=1, doc="examples simulated per map call")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Network choice (docs/design.md §6)."""

    name: str = _value("ensai_net", choices=("inception_v4", "alexnet", "overfeat", "ensai_net"),
                       doc="architecture (§6.5)")
    bn_mode: str = _value("train", choices=("train", "frozen"), doc="Inception BN (§6.5.1 [R])")
    width: float = _value(1.0, lo=0.0, lo_open=True, hi=1.0,
                          doc="multiplier of every hidden layer's filters and units; 1 = the "
                              "paper's network (§6.5), below 1 a narrower one (cpu preset)")
    head: str = _value("point", choices=("point", "diagonal", "full"),
                       doc="output head: 'point' estimates with the parity-min MSE (§7.1), or "
                           "a Gaussian mean and 'diagonal' or 'full' covariance trained with "
                           "the parity-aware Gaussian NLL")
    shear_outputs: bool = _value(False, doc="also predict the external shear (gamma_1, "
                                            "gamma_2); needs lens.shear")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimiser and schedule (docs/design.md §7.2 [R])."""

    batch_size: int = _value(50, lo=1, doc="§0")
    learning_rate: float = _value(1e-4, lo=0.0, lo_open=True, doc="§7.2 [R]")
    min_learning_rate: float = _value(1e-6, lo=0.0, doc="§7.2 [R]")
    plateau_factor: float = _value(0.1, lo=0.0, hi=1.0, lo_open=True, hi_open=True, doc="§7.2 [R]")
    plateau_patience: int = _value(20, lo=1, doc="epochs without gain before lr decay")
    steps_per_epoch: int = _value(1000, lo=1, doc="steps between validations")
    epochs: int = _value(1000, lo=1, doc="§7.2: up to 10^6 steps")
    clipnorm: float = _value(10.0, lo=0.0, lo_open=True, doc="§7.2 [R] safety net")
    warmup_steps: int = _value(0, lo=0, doc="linear warm-up (§7.2 [R], optional)")
    mixed_precision: bool = _value(False, doc="mixed_bfloat16 (output layer stays float32)")
    freeze_batch_norm: bool = _value(False, doc="fine-tuning: every BatchNormalization layer "
                                                "keeps the moving statistics and offsets of "
                                                "train.init_weights and normalises with them in "
                                                "training too, so training and inference compute "
                                                "the same function (model.bn_mode='frozen' instead "
                                                "builds the release's never-normalising layers)")
    seed: int = _value(0, lo=0, doc="Keras seed for weight initialisation")
    image_summaries: int = _value(4, lo=0, doc="validation images shown in TensorBoard per epoch")
    init_weights: str = _value("", doc="a .keras file of the same architecture whose weights "
                                       "start the run (fine-tuning, as the code's RESTORE = True, "
                                       "docs/design.md §7.2 [C]); '' = fresh initialisation")
    time_budget_minutes: float = _value(0.0, lo=0.0, doc="stop at the end of the first epoch "
                                                        "past this wall-clock time, then export "
                                                        "as usual; 0 = no limit")
    combine_steps: int = _value(2000, lo=1, doc="combiner training steps (§7.4 [R]: a few thousand)")
    combine_learning_rate: float = _value(1e-3, lo=0.0, lo_open=True, doc="combiner Adam lr (§7.4 [R])")
    combine_seed: int = _value(7, lo=3, doc="data seed of the combiner's validation-distribution "
                                            "data; >= 3 so it never equals the train/val/test "
                                            "split seeds 0/1/2 (§7.4 [R], §8.3)")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Evaluation settings (docs/design.md §8)."""

    batch_size: int = _value(100, lo=1, doc="examples per forward pass")
    n: int = _value(10000, lo=1, doc="test examples used (§8.3)")
    band_bins: int = _value(12, lo=1, doc="bins of the true value for Figure 1's 68%/95% bands (§8.2)")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """All settings of one experiment."""

    image: ImageConfig = dataclasses.field(default_factory=ImageConfig)
    lens: LensPrior = dataclasses.field(default_factory=LensPrior)
    source: SourceConfig = dataclasses.field(default_factory=SourceConfig)
    simulate: SimulateConfig = dataclasses.field(default_factory=SimulateConfig)
    observe: ObserveConfig = dataclasses.field(default_factory=ObserveConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    evaluate: EvalConfig = dataclasses.field(default_factory=EvalConfig)


def _paper():
    """Spec values throughout, meant for a GPU (docs/design.md §7.2 [R])."""
    return ExperimentConfig()


def _smoke():
    """A few tiny steps: checks that everything runs end to end."""
    cfg = ExperimentConfig()
    return dataclasses.replace(
        cfg,
        simulate=dataclasses.replace(cfg.simulate, oversample=1),
        data=dataclasses.replace(cfg.data, val_size=8, test_size=16, sim_batch_size=4),
        train=dataclasses.replace(cfg.train, batch_size=4, steps_per_epoch=2, epochs=1,
                                  plateau_patience=1),
        evaluate=dataclasses.replace(cfg.evaluate, batch_size=8, n=16),
    )


def _cpu():
    """Most accuracy per CPU-hour on a 2-core CPU.

    - mixed_bfloat16: training runs 2x faster than float32 on a CPU with
      AVX512_BF16 (13.8 vs 7.0 img/s for the 8-module net); the output layer
      stays float32. On a CPU without it (AVX2 only) bfloat16 is emulated and
      about 2x slower than float32 instead; training then warns, and
      ``--set train.mixed_precision=false`` is the faster choice.
    - lr 3e-4, 3x the GPU value of docs/design.md §7.2 [R]: a CPU budget is some 10^4
      steps, not 10^6, so a faster start matters more than the last digit;
      the plateau decay (x0.1 down to 1e-6) still applies, with patience 4
      epochs of 250 steps (1000 steps instead of 20k).
    - batch 32 instead of 50: the same images/s on 2 cores, so more updates
      per CPU-hour.
    - 300 validation lenses instead of 1000: validation is pure overhead in
      a CPU run (about 2 s every 250 steps); checkpoint selection only needs
      a ranking.
    - oversample 1 in the simulator: ray tracing is 4x cheaper, so the
      online pipeline on 2 shared cores never starves the network.
    - width 0.25: every hidden layer has a quarter of the paper's filters and
      units (about 1/16 of the FLOPs and parameters), so each network sees
      several times more lenses per CPU-hour, and the four networks plus the
      combined model fit the 150 MB limit of ``trained_weights/``.
    - 300 combiner steps: its training data are simulated online at the
      validation-time settings, which is the slow part on a CPU.
    """
    cfg = ExperimentConfig()
    return dataclasses.replace(
        cfg,
        simulate=dataclasses.replace(cfg.simulate, oversample=1),
        data=dataclasses.replace(cfg.data, val_size=300),
        model=dataclasses.replace(cfg.model, width=0.25),
        train=dataclasses.replace(cfg.train, batch_size=32, learning_rate=3e-4,
                                  plateau_patience=4, steps_per_epoch=250, epochs=400,
                                  mixed_precision=True, combine_steps=300),
    )


PRESETS = {"paper": _paper, "smoke": _smoke, "cpu": _cpu}
"""Named presets: name -> function returning an :class:`ExperimentConfig`."""


def get_preset(name):
    """Return the preset config ``name`` (one of :data:`PRESETS`).

    Args:
        name: preset name, ``"paper"``, ``"smoke"`` or ``"cpu"``.

    Returns:
        A fresh :class:`ExperimentConfig`.

    Raises:
        ConfigError: for an unknown name, listing the valid presets.
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; valid presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]()


def config_to_dict(cfg):
    """Nested plain dict of a config (tuples become lists, ready for YAML).

    Args:
        cfg: an :class:`ExperimentConfig`, or one of its section dataclasses.

    Returns:
        dict: ``{section: {key: value}}`` (one level for a section).
    """
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = config_to_dict(value)
        elif isinstance(value, tuple):
            out[f.name] = list(value)
        else:
            out[f.name] = value
    return out


def valid_keys(cfg=None):
    """All ``section.key`` names of a config, sorted.

    Args:
        cfg: an :class:`ExperimentConfig`; ``None`` uses the defaults.

    Returns:
        list[str]: names such as ``"train.learning_rate"``.
    """
    cfg = cfg if cfg is not None else ExperimentConfig()
    return sorted(f"{s.name}.{f.name}" for s in dataclasses.fields(cfg)
                  for f in dataclasses.fields(getattr(cfg, s.name)))


def _coerce(key, value, default):
    """Convert a parsed override to the type of the field's default."""
    try:
        if isinstance(default, bool):
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            if not isinstance(value, bool):
                raise TypeError
            return value
        if isinstance(default, int):
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise TypeError
            return int(float(value))
        if isinstance(default, float):
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if isinstance(default, str):
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise TypeError
            return str(value)
        if isinstance(default, tuple):
            if isinstance(value, str):
                value = yaml.safe_load(value)
            if not isinstance(value, (list, tuple)):
                raise TypeError
            if default and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                               for v in default):
                kind = int if all(isinstance(v, int) for v in default) else float
                return tuple(_coerce(key, v, kind()) for v in value)
            return tuple(value)
    except (TypeError, ValueError):
        pass
    raise ConfigError(f"{key}: {value!r} is not a valid {type(default).__name__} "
                      f"(default {default!r})")


def config_from_dict(data, base=None):
    """Build a config from a nested dict, starting from ``base``.

    Args:
        data: ``{section: {key: value}}`` mapping (as loaded from YAML), giving
            only the fields to change; ``None`` returns ``base`` unchanged.
        base: the starting :class:`ExperimentConfig`; ``None`` uses the defaults.

    Returns:
        A new, validated :class:`ExperimentConfig`.

    Raises:
        ConfigError: for an unknown section or key, naming it and listing the
            valid ones, or for a value of the wrong type or out of range.
    """
    cfg = base if base is not None else ExperimentConfig()
    if data is None:
        return cfg
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(data).__name__}")
    sections = {f.name for f in dataclasses.fields(cfg)}
    updates = {}
    for section, values in data.items():
        if section not in sections:
            raise ConfigError(f"unknown config section {section!r}; valid sections: "
                              f"{', '.join(sorted(sections))}")
        sub = getattr(cfg, section)
        if not isinstance(values, dict):
            raise ConfigError(f"config section {section!r} must be a mapping, got {values!r}")
        fields = {f.name: f for f in dataclasses.fields(sub)}
        changes = {}
        for key, value in values.items():
            if key not in fields:
                raise ConfigError(
                    # escaped: a key holding a newline must not break the one-line message
                    f"unknown config key {section}.{str(key).encode('unicode_escape').decode()}; "
                    f"valid keys in {section!r}: "
                    f"{', '.join(sorted(fields))}")
            changes[key] = _coerce(f"{section}.{key}", value, getattr(sub, key))
        updates[section] = dataclasses.replace(sub, **changes)
    cfg = dataclasses.replace(cfg, **updates)
    validate_config(cfg)
    return cfg


def apply_overrides(cfg, overrides):
    """Apply ``section.key=value`` strings (values parsed as YAML).

    Args:
        cfg: the starting :class:`ExperimentConfig`.
        overrides: iterable of strings such as ``"train.learning_rate=3e-4"``
            or ``"lens.theta_e=[0.5, 2.0]"``.

    Raises:
        ConfigError: for a malformed override, an unknown key (the message
            lists the valid keys) or an invalid value.
    """
    nested = {}
    for item in overrides or ():
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if key.count(".") != 1:
            raise ConfigError(f"override key {key!r} must be section.key; valid keys: "
                              f"{', '.join(valid_keys(cfg))}")
        section, name = key.split(".")
        if f"{section}.{name}" not in valid_keys(cfg):
            raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(valid_keys(cfg))}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"{key}: cannot parse value {raw!r}: {err}") from None
        nested.setdefault(section, {})[name] = value
    return config_from_dict(nested, base=cfg)


def _check_bound(key, value, meta, what="value"):
    lo, hi = meta.get("lo"), meta.get("hi")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}: {what} {value!r} must be finite")
    if lo is not None and (value < lo or (meta.get("lo_open") and value == lo)):
        op = ">" if meta.get("lo_open") else ">="
        raise ConfigError(f"{key}: {what} {value!r} is not allowed; it must be {op} {lo}")
    if hi is not None and (value > hi or (meta.get("hi_open") and value == hi)):
        op = "<" if meta.get("hi_open") else "<="
        raise ConfigError(f"{key}: {what} {value!r} is not allowed; it must be {op} {hi}")


def validate_config(cfg):
    """Check every field against its metadata; return ``cfg`` unchanged.

    Besides the per-field bounds and choices it checks cross-field rules
    (learning-rate floor, shear outputs, PSF and noise-spectrum files exist).

    Args:
        cfg: the :class:`ExperimentConfig` to check.

    Returns:
        ``cfg`` itself.

    Raises:
        ConfigError: naming the key, the value and what is allowed.
    """
    for section in dataclasses.fields(cfg):
        sub = getattr(cfg, section.name)
        for f in dataclasses.fields(sub):
            key = f"{section.name}.{f.name}"
            value = getattr(sub, f.name)
            meta = f.metadata
            kind = meta.get("kind")
            if kind == "range":
                if f.name == "family_weights":
                    if len(value) != 3 or sum(value) <= 0:
                        raise ConfigError(f"{key}: {value!r} must be three non-negative weights "
                                          "(clumpy, stamp, sersic) with a positive sum")
                elif len(value) != 2:
                    raise ConfigError(f"{key}: {value!r} must be a (min, max) pair")
                elif value[0] > value[1]:
                    raise ConfigError(f"{key}: min {value[0]!r} > max {value[1]!r}; "
                                      "a range must have min <= max")
                for v in value:
                    if meta.get("integer") and int(v) != v:
                        raise ConfigError(f"{key}: {value!r} must hold integers")
                    _check_bound(key, v, meta, what="bound")
            elif kind == "value":
                choices = meta.get("choices")
                if choices is not None and value not in choices:
                    raise ConfigError(f"{key}: {value!r} is not one of {', '.join(choices)}")
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    _check_bound(key, value, meta)
            elif kind == "dirs":
                for d in value:
                    if not os.path.isdir(os.path.expanduser(str(d))):
                        raise ConfigError(f"{key}: stamp directory {d!r} does not exist; "
                                          "give existing folders of FITS/PNG/JPEG stamps")
    if cfg.train.min_learning_rate > cfg.train.learning_rate:
        raise ConfigError(f"train.min_learning_rate: {cfg.train.min_learning_rate!r} exceeds "
                          f"train.learning_rate {cfg.train.learning_rate!r}")
    if cfg.model.shear_outputs and not cfg.lens.shear:
        raise ConfigError("model.shear_outputs: true needs lens.shear: true (a network cannot "
                          "learn the shear from lenses simulated without it)")
    if cfg.observe.psf == "file" and not cfg.observe.psf_file:
        raise ConfigError("observe.psf_file: '' is not allowed when observe.psf = 'file'; "
                          "give a .fits or .npy PSF image")
    for key, path in (("observe.psf_file", cfg.observe.psf_file),
                      ("observe.noise_spectrum", cfg.observe.noise_spectrum)):
        if path and not os.path.isfile(os.path.expanduser(path)):
            raise ConfigError(f"{key}: file {path!r} does not exist")
    return cfg


def load_config(path=None, preset="paper", overrides=()):
    """Resolve a config: preset, then a YAML file, then ``--set`` overrides.

    Args:
        path: optional YAML file (a nested mapping of sections).
        preset: name of the starting preset.
        overrides: ``section.key=value`` strings, applied last.

    Raises:
        ConfigError: for a missing or unparsable file, an unknown key or an
            invalid value.
    """
    cfg = get_preset(preset)
    if path is not None:
        path = pathlib.Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: "
                              f"{' '.join(str(err).split())}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"config file {str(path)!r} is not a text file") from None
        try:
            cfg = config_from_dict(data, base=cfg)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
    cfg = apply_overrides(cfg, overrides)
    return validate_config(cfg)


def save_config(cfg, path):
    """Write ``cfg`` as YAML to ``path`` (a file, or a folder -> ``config.yaml``).

    The file is written under a temporary name and renamed, so a reader never
    sees half a file. Returns the path written.

    Args:
        cfg: the :class:`ExperimentConfig` to write.
        path: destination file, or an existing folder to write ``config.yaml`` into.

    Returns:
        ``pathlib.Path`` of the file written.
    """
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / "config.yaml"
    return atomic.write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def target_count(cfg):
    """Number of regression targets a config trains: 5, or 7 with ``model.shear_outputs``.

    Args:
        cfg: an :class:`ExperimentConfig`.

    Returns:
        int: 5 (``theta_E, e_x, e_y, x_L, y_L``) or 7 (plus the two shear components).
    """
    return conventions.TARGET_COUNTS[1] if cfg.model.shear_outputs else conventions.NUM_PARAMS
