"""The configuration schema: one frozen dataclass per section, gathered in ExperimentConfig.

Every physical default is the [R] value of docs/design.md and cites its
section. Ranges are ``(low, high)`` tuples; their bounds and a scalar's
bounds or choices live in each field's metadata (:func:`_range`,
:func:`_value`), which :func:`ensai_tf.config.validate_config` checks, so
adding a field with one of them is all that is needed for it to be checked.
"""

import dataclasses
import reprlib

from ensai_tf import conventions
from ensai_tf.errors import EnsaiError

__all__ = [
    "ConfigError",
    "quote_value",
    "MAX_QUOTED",
    "MAX_COUNT",
    "ImageConfig",
    "LensPrior",
    "SourceConfig",
    "SimulateConfig",
    "ObserveConfig",
    "BandsConfig",
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "EvalConfig",
    "ExperimentConfig",
    "target_count",
]


class ConfigError(EnsaiError, ValueError):
    """An unknown key or an invalid value in a configuration."""


MAX_QUOTED = 80
"""Characters of a value quoted in an error message; longer ones are cut with '...'."""

MAX_COUNT = 2**62
"""Largest integer any config value may hold (fields give tighter bounds where sizes matter)."""

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict = 3, 6, 6, 4
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = MAX_QUOTED, MAX_QUOTED, MAX_QUOTED


def quote_value(value):
    """``repr(value)`` for an error message, at most :data:`MAX_QUOTED` characters.

    Bounded in time and memory whatever the value (a YAML alias bomb, a
    10-MB string), so quoting a bad value never costs more than the message.

    Args:
        value: any parsed config value.

    Returns:
        str of at most ``MAX_QUOTED`` characters, one line.

    Example:
        >>> quote_value("x" * 1000)[-5:]
        "x'..."
    """
    text = " ".join(_REPR.repr(value).split())
    return text if len(text) <= MAX_QUOTED else text[:MAX_QUOTED - 3] + "..."


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

    npix: int = _value(conventions.NPIX, lo=8, hi=4096, doc="image side, pixels")
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

    oversample: int = _value(2, lo=1, hi=16, doc="ray-trace sub-pixels per output pixel per axis (§3.4 [R])")
    field_factor: float = _value(1.6, lo=1.0, hi=10.0, doc="ray-traced field / output field (§3.4)")
    min_magnification: float = _value(2.0, lo=0.0, doc="acceptance: magnification >= this (§3.5)")
    min_containment: float = _value(0.99, lo=0.0, hi=1.0,
                                    doc="acceptance: flux fraction inside the field (§3.5)")
    max_attempts: int = _value(64, lo=1, hi=10**6, doc="candidates per example before giving up")
    lens_light: bool = _value(False, doc="add Sersic lens light (§4 [R]: off by default)")
    lens_light_n: tuple = _range((2.0, 6.0), lo=0.2, doc="lens-light Sersic index (§4 [R])")
    lens_light_r_eff: tuple = _range((0.3, 2.0), lo=0.0, doc="lens-light R_eff, arcsec (§4 [R])")
    lens_light_amplitude: tuple = _range((0.3, 10.0), lo=0.0, lo_open=True,
                                         doc="lens-light peak / arc peak, log-uniform (§4 [R])")
    lens_light_q_jitter: float = _value(0.1, lo=0.0, doc="lens-light q = mass q + U(-j, j), "
                                                         "clipped to [0.3, 1] (§4 [R])")
    lens_light_pa_sigma_deg: float = _value(10.0, lo=0.0, doc="lens-light PA scatter about the "
                                                              "mass major axis, degrees (§4 [R])")
    placement_candidates: int = _value(16, lo=1, hi=4096, doc="source positions drawn at once per "
                                                     "candidate; first inside wins (§3.3 [R])")
    source_pixels: int = _value(128, lo=4, hi=4096, doc="side of the rendered source-plane image, "
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
    mask_max_tries: int = _value(100, lo=1, hi=10**6, doc="mask resampling cap (§5.6 [R])")
    norm_threshold: float = _value(0.4, lo=0.0, doc="arc level defining the normalising max (§5.7)")
    norm_jitter_rms: float = _value(0.05, lo=0.0, doc="§9 #5")
    zero_bias_rms: float = _value(0.05, lo=0.0, doc="§5.3 step 7")
    shift_candidates: int = _value(16, lo=1, hi=4096, doc="shift offsets drawn at once; first with "
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
    mask_chunk: int = _value(5, lo=1, hi=4096, doc="mask tries evaluated per vectorised chunk (§5.6)")
    max_redraws: int = _value(4, lo=0, hi=1000, doc="redraws of non-finite examples (§9 #23 [R])")
    peak_normalise: bool = _value(False, doc="finally divide each image by its own 3x3-median "
                                             "peak, as ensai predict scales a user's image; for "
                                             "networks trained with lens light (§5.7)")


@dataclasses.dataclass(frozen=True)
class BandsConfig:
    """Filters a network reads at once (docs/design.md §5.10)."""

    count: int = _value(1, lo=1, hi=2, doc="1: one filter; 2: two filters as channels (blue, "
                                            "red), observed apart and PSF-matched (§5.10)")
    colour_ratio: tuple = _range((1.2, 15.0), lo=0.0, lo_open=True,
                                 doc="kappa, how much bluer the arcs are than the lens light "
                                     "(blue/red of the arcs over that of the lens), "
                                     "log-uniform (§5.10)")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Dataset sizes, seeds and caches (docs/design.md §3.7)."""

    seed: int = _value(0, lo=0, doc="user offset added to every split seed")
    val_size: int = _value(1000, lo=1, hi=10**7, doc="fixed validation examples (§7.3)")
    test_size: int = _value(10000, lo=1, hi=10**7, doc="fixed test examples (§8.3)")
    cache_dir: str = _value("", doc="where validation/test caches go; '' = ~/.cache/ensai_tf")
    arcs_dir: str = _value("", doc="pre-generated noise-free arcs; '' = simulate online")
    sim_batch_size: int = _value(32, lo=1, hi=65536, doc="examples simulated per map call")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Network choice (docs/design.md §6)."""

    name: str = _value("ensai_net", choices=conventions.NETWORK_NAMES, doc="architecture (§6.5)")
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
    input_stretch: float = _value(0.0, lo=0.0, hi=100.0, doc="softening of an asinh stretch after the bias "
                                                   "removal, image units (§6.1.1); 0 = linear")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimiser and schedule (docs/design.md §7.2 [R])."""

    batch_size: int = _value(50, lo=1, hi=65536, doc="§0")
    learning_rate: float = _value(1e-4, lo=0.0, lo_open=True, doc="§7.2 [R]")
    min_learning_rate: float = _value(1e-6, lo=0.0, doc="§7.2 [R]")
    plateau_factor: float = _value(0.1, lo=0.0, hi=1.0, lo_open=True, hi_open=True, doc="§7.2 [R]")
    plateau_patience: int = _value(20, lo=1, doc="epochs without gain before lr decay")
    steps_per_epoch: int = _value(1000, lo=1, hi=10**9, doc="steps between validations")
    epochs: int = _value(1000, lo=1, hi=10**7, doc="§7.2: up to 10^6 steps")
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
    image_summaries: int = _value(4, lo=0, hi=1000, doc="validation images shown in TensorBoard per epoch")
    init_weights: str = _value("", doc="a .keras file of the same architecture whose weights "
                                       "start the run (fine-tuning, as the code's RESTORE = True, "
                                       "docs/design.md §7.2 [C]); '' = fresh initialisation")
    time_budget_minutes: float = _value(0.0, lo=0.0, doc="stop at the end of the first epoch "
                                                        "past this wall-clock time, then export "
                                                        "as usual; 0 = no limit")
    combine_steps: int = _value(2000, lo=1, hi=10**7, doc="batches of fresh lenses the "
                                "combiner's frozen networks predict once (§7.4 [R])")
    combine_epochs: int = _value(100, lo=1, hi=10**5, doc="passes of the combination weights' "
                                 "fit over those predictions (§7.4 [R])")
    combine_learning_rate: float = _value(1e-3, lo=0.0, lo_open=True, doc="combiner Adam lr (§7.4 [R])")
    combine_loss: str = _value("mse", choices=("mse", "logcosh"), doc="combiner loss: the "
                               "paper's parity-min MSE, or a parity-corrected log-cosh (§7.4 [R])")
    combine_loss_scale: float = _value(0.01, lo=0.0, lo_open=True, doc="residual where the "
                                       "log-cosh turns from quadratic to linear, target units "
                                       "(arcsec for theta_E, x, y) (§7.4 [R])")
    combine_seed: int = _value(7, lo=3, doc="data seed of the combiner's validation-distribution "
                                            "data; >= 3 so it never equals the train/val/test "
                                            "split seeds 0/1/2 (§7.4 [R], §8.3)")
    combine_views: int = _value(1, choices=(1, 2, 4, 8), doc="views of the image each backbone "
                                "of a combined network averages over: 1 as given, 2 and its "
                                "transpose, 4 rotations, 8 all flips and rotations (§8.6)")
    single_view_backbones: tuple = dataclasses.field(
        default=(), metadata={"kind": "names", "doc": "backbones of a combined network (the "
                              "folder names given to --models) that see the image as given "
                              "only, whatever combine_views: the slow ones, to keep the time "
                              "per lens down (§8.6)"})
    split_view_backbones: tuple = dataclasses.field(
        default=(), metadata={"kind": "names", "doc": "backbones of a combined network that "
                              "join it twice instead of on combine_views: averaging the four "
                              "views that keep the x and y axes, and the four that swap them, so "
                              "that a network better at e_x than e_y or the reverse serves both "
                              "(§8.6)"})


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Evaluation settings (docs/design.md §8)."""

    batch_size: int = _value(100, lo=1, hi=65536, doc="examples per forward pass")
    n: int = _value(10000, lo=1, hi=10**7, doc="test examples used (§8.3)")
    band_bins: int = _value(12, lo=1, hi=10**4, doc="bins of the true value for Figure 1's 68%/95% bands (§8.2)")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """All settings of one experiment."""

    image: ImageConfig = dataclasses.field(default_factory=ImageConfig)
    lens: LensPrior = dataclasses.field(default_factory=LensPrior)
    source: SourceConfig = dataclasses.field(default_factory=SourceConfig)
    simulate: SimulateConfig = dataclasses.field(default_factory=SimulateConfig)
    observe: ObserveConfig = dataclasses.field(default_factory=ObserveConfig)
    bands: BandsConfig = dataclasses.field(default_factory=BandsConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    evaluate: EvalConfig = dataclasses.field(default_factory=EvalConfig)


def target_count(cfg):
    """Number of regression targets a config trains: 5, or 7 with ``model.shear_outputs``.

    Args:
        cfg: an :class:`ExperimentConfig`.

    Returns:
        int: 5 (``theta_E, e_x, e_y, x_L, y_L``) or 7 (plus the two shear components).
    """
    return conventions.TARGET_COUNTS[1] if cfg.model.shear_outputs else conventions.NUM_PARAMS
