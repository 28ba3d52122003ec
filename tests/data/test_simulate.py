"""Tests of the noise-free generator (docs/design.md §3.1, §3.3-§3.5, §4) and the contact sheet."""

import dataclasses
import math
import time

import matplotlib.path
import numpy as np
import pytest
import tensorflow as tf

import ensai_tf
from ensai_tf import config as config_lib
from ensai_tf import conventions
from ensai_tf import plotting
from ensai_tf.data import simulate as sim
from ensai_tf.data import sources
from ensai_tf.errors import InputError
from ensai_tf.lensing import caustics


def _with(cfg, **sections):
    """``cfg`` with ``section={field: value}`` replacements, validated."""
    return config_lib.validate_config(dataclasses.replace(cfg, **{
        name: dataclasses.replace(getattr(cfg, name), **changes)
        for name, changes in sections.items()}))


@pytest.fixture(scope="module")
def cfg():
    """Smoke preset (oversample 1) with a 96-pixel field and theta_E <= 1.2 arcsec.

    The properties under test do not depend on the field size; a smaller
    field keeps the default run short on 2 CPU cores. theta_E is capped so
    that most arcs fit the 3.84-arcsec field (fewer redraws).
    """
    base = config_lib.get_preset("smoke")
    return _with(base, image={"npix": 96}, lens={"theta_e": (0.4, 1.2)})


@pytest.fixture(scope="module")
def stamps():
    return sources.load_stamp_library("train")


@pytest.fixture(scope="module")
def batch(cfg, stamps):
    """Six examples simulated in one eager batch."""
    out = sim.simulate_batch(sim.example_seeds(3, "train", 0, 6), cfg, stamps)
    return {k: v.numpy() for k, v in out.items()}


# ---------------------------------------------------------------------------
# Seeds
# ---------------------------------------------------------------------------

def test_example_seeds_follow_the_fold_in_definition():
    seeds = sim.example_seeds(5, "validation", 10, 3).numpy()
    base = tf.constant([5, sim.SPLIT_IDS["validation"]], tf.int64)
    expected = [tf.random.fold_in(base, tf.constant(10 + i, tf.int64)).numpy() for i in range(3)]
    np.testing.assert_array_equal(seeds, np.stack(expected))
    assert seeds.dtype == np.int64
    # A split is its own stream; the same slice of two splits differs.
    other = sim.example_seeds(5, "test", 10, 3).numpy()
    assert not np.any(np.all(seeds == other, axis=1))
    # Grouping does not matter: examples 10..12 are examples 11..12 shifted by one.
    np.testing.assert_array_equal(seeds[1:], sim.example_seeds(5, "validation", 11, 2).numpy())


def test_example_seeds_reject_unknown_split():
    with pytest.raises(InputError, match="unknown split"):
        sim.example_seeds(0, "training", 0, 2)


# ---------------------------------------------------------------------------
# Acceptance rules and outputs
# ---------------------------------------------------------------------------

def test_accepted_examples_satisfy_the_acceptance_rules(batch, cfg):
    arcs = batch["arcs"]
    assert arcs.shape == (6, cfg.image.npix, cfg.image.npix, 1) and arcs.dtype == np.float32
    assert np.all(np.isfinite(arcs)) and np.all(arcs >= 0.0)
    # docs/design.md §3.5: normalised to peak 1, exactly (x / max(x) == 1 at the maximum).
    np.testing.assert_array_equal(arcs.max(axis=(1, 2, 3)), np.ones(6, np.float32))
    assert np.all(batch["magnification"] >= cfg.simulate.min_magnification)
    assert np.all(batch["containment"] >= cfg.simulate.min_containment)
    assert np.all(batch["containment"] <= 1.0 + 1e-6)
    assert np.all((batch["attempts"] >= 1) & (batch["attempts"] <= cfg.simulate.max_attempts))
    assert batch["params"].shape == (6, conventions.NUM_PARAMS)
    assert set(sim.OUTPUT_KEYS) <= set(batch)
    assert "lens_light" not in batch and "gamma_1" not in batch


def _sis_source(sigma, size=128, half=0.3):
    """A peak-1 circular Gaussian source image of standard deviation ``sigma`` arcsec."""
    u = (np.arange(size) + 0.5) * (2.0 / size) - 1.0
    x, y = np.meshgrid(u * half, u * half, indexing="xy")
    image = np.exp(-0.5 * (x * x + y * y) / sigma**2).astype(np.float32)
    return tf.constant(image[None]), tf.constant([half], tf.float32)


def _render_sis(theta_e, beta, npix, oversample, sigma=0.01, field_factor=1.6):
    cfg = config_lib.ExperimentConfig()
    geo = sim.ray_geometry(
        dataclasses.replace(cfg.image, npix=npix),
        dataclasses.replace(cfg.simulate, oversample=oversample, field_factor=field_factor))
    images, half = _sis_source(sigma)
    params = tf.constant([[theta_e, 0.0, 0.0, 0.0, 0.0]], tf.float32)
    arcs, flux_field, flux_ext, flux_src = sim.render_arcs(
        params, None, None, images, half, tf.constant([[beta, 0.0]], tf.float32), geo)
    return arcs.numpy()[0], float(flux_field[0]), float(flux_ext[0]), float(flux_src[0])


def test_magnification_matches_the_sis_point_source_limit():
    # SIS, source at beta < theta_E: two images, total magnification 2 theta_E / beta.
    # A 0.01-arcsec Gaussian at beta = 0.3 arcsec is point-like to ~1e-3; tolerance 3%
    # covers sampling 0.01-arcsec-wide images with 0.02-arcsec rays (oversample 2).
    _, flux_field, flux_ext, flux_src = _render_sis(1.0, 0.3, npix=96, oversample=2)
    np.testing.assert_allclose(flux_ext / flux_src, 2.0 * 1.0 / 0.3, rtol=0.03)
    np.testing.assert_allclose(flux_field / flux_ext, 1.0, atol=1e-6)


def test_containment_is_the_ring_fraction_inside_the_field():
    # A source at the centre of an SIS makes a ring of radius theta_E. With theta_E = 2.2
    # arcsec and a 3.84-arcsec-wide field (half-side L = 1.92), the fraction of the ring
    # inside the square is 1 - (4/pi) arccos(L / theta_E). Tolerance 0.02 absolute covers
    # the ring's finite width (~0.05 arcsec) at the field edges.
    theta_e, npix = 2.2, 96
    _, flux_field, flux_ext, _ = _render_sis(theta_e, 0.0, npix=npix, oversample=1, sigma=0.03)
    half_side = 0.5 * npix * conventions.PIXEL_SCALE
    expected = 1.0 - (4.0 / math.pi) * math.acos(half_side / theta_e)
    assert abs(flux_field / flux_ext - expected) < 0.02


def test_sis_ring_peaks_at_the_einstein_radius():
    # Tiny circular source exactly behind an SIS: the azimuthal mean of the image peaks at
    # r = theta_E; tolerance one pixel (0.04 arcsec), the radial bin width.
    theta_e, npix = 1.3, 96
    arcs, *_ = _render_sis(theta_e, 0.0, npix=npix, oversample=2, sigma=0.02)
    x, y = conventions.pixel_grid(npix)
    r = np.hypot(x, y)
    edges = np.arange(0.0, r.max(), conventions.PIXEL_SCALE)
    which = np.digitize(r.ravel(), edges)
    profile = np.bincount(which, arcs.ravel()) / np.maximum(np.bincount(which), 1)
    centres = np.append(edges, edges[-1] + conventions.PIXEL_SCALE) - 0.5 * conventions.PIXEL_SCALE
    assert abs(centres[np.argmax(profile)] - theta_e) <= conventions.PIXEL_SCALE


# ---------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def graph_fn(cfg, stamps):
    return tf.function(lambda s: sim.simulate_batch(s, cfg, stamps),
                       input_signature=[tf.TensorSpec([None, 2], tf.int64)])


def _numpy(out):
    return {k: v.numpy() if hasattr(v, "numpy") else v for k, v in out.items()}


def _cat(parts):
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def test_same_seed_same_image_whatever_the_batching(batch, cfg, stamps, graph_fn):
    # Bitwise within one execution mode: eager 6 vs 2 + 4; graph 6 vs 2 + 4 vs batches of
    # 3 in Dataset.map (unknown batch size).
    seeds = sim.example_seeds(3, "train", 0, 6)
    eager_split = _cat([_numpy(sim.simulate_batch(seeds[:2], cfg, stamps)),
                        _numpy(sim.simulate_batch(seeds[2:], cfg, stamps))])
    graph_whole = _numpy(graph_fn(seeds))
    graph_split = _cat([_numpy(graph_fn(seeds[:2])), _numpy(graph_fn(seeds[2:]))])
    mapped = {n: _cat(list(tf.data.Dataset.from_tensor_slices(seeds).batch(n).map(
        lambda s: sim.simulate_batch(s, cfg, stamps)).as_numpy_iterator())) for n in (3, 6)}
    for key, value in batch.items():
        np.testing.assert_array_equal(eager_split[key], value, err_msg=key)
        np.testing.assert_array_equal(graph_split[key], graph_whole[key], err_msg=key)
        np.testing.assert_array_equal(mapped[3][key], mapped[6][key], err_msg=key)
        # Across modes (eager, tf.function, tf.data) the graph optimisers may round float32
        # arithmetic differently: a few ulp, never a different draw. Arcs are <= 1, so an
        # absolute 1e-5 is ~100 ulp at the peak.
        for other in (graph_whole, mapped[3]):
            np.testing.assert_allclose(other[key], value, rtol=1e-4, atol=1e-5, err_msg=key)


def test_simulate_returns_numpy_and_matches_simulate_batch(cfg, stamps):
    # simulate() runs in tf.data, as the pipeline does: bitwise equal to Dataset.map.
    out = ensai_tf.simulate(4, seed=3, config=cfg, batch_size=3)
    assert all(isinstance(v, np.ndarray) for v in out.values())
    expected = _cat(list(tf.data.Dataset.from_tensor_slices(sim.example_seeds(3, "train", 0, 4))
                         .batch(4).map(lambda s: sim.simulate_batch(s, cfg, stamps))
                         .as_numpy_iterator()))
    assert set(out) == set(expected)
    for key in out:
        np.testing.assert_array_equal(out[key], expected[key], err_msg=key)


# ---------------------------------------------------------------------------
# Priors and placement
# ---------------------------------------------------------------------------

def test_lens_params_follow_the_configured_priors():
    prior = dataclasses.replace(config_lib.LensPrior(), shear=True)
    seeds = sim.example_seeds(0, "train", 0, 2000)
    out = {k: v.numpy() for k, v in sim.sample_lens_params(seeds, prior).items()}
    p = out["params"]
    assert p.shape == (2000, 5) and p.dtype == np.float32
    theta, eps = p[:, 0], np.hypot(p[:, 1], p[:, 2])
    assert theta.min() >= 0.1 and theta.max() <= 3.0
    assert eps.max() <= 0.9 + 1e-6
    assert np.abs(p[:, 3:]).max() <= 0.05
    gamma = np.hypot(out["gamma_1"], out["gamma_2"])
    assert gamma.max() <= 0.3 + 1e-6
    # Uniform draws: means within 4 standard errors (sd/sqrt(2000)) of the midpoints.
    assert abs(theta.mean() - 1.55) < 4 * (2.9 / math.sqrt(12)) / math.sqrt(2000)
    assert abs(eps.mean() - 0.45) < 4 * (0.9 / math.sqrt(12)) / math.sqrt(2000)
    # phi ~ U(0, 360): e_x and e_y average to 0 (sd of eps cos phi <= 0.9/sqrt(2)).
    assert np.abs(p[:, 1:3].mean(axis=0)).max() < 4 * 0.64 / math.sqrt(2000)


def test_placed_sources_lie_in_their_rule_region():
    source_cfg = config_lib.SourceConfig()
    seeds = sim.example_seeds(1, "train", 0, 200)
    params = sim.sample_lens_params(seeds, config_lib.LensPrior())["params"]
    placed = sim.place_sources(seeds, params, source_cfg, candidates=16)
    pos, rule = placed["position"].numpy(), placed["rule"].numpy()
    assert set(np.unique(rule)) == {sim.RULE_A, sim.RULE_B}
    p = [params[:, i] for i in range(5)]
    caustic = caustics.tangential_caustic(*p, num=sim.CURVE_SAMPLES).numpy().astype(np.float64)
    cut = caustics.cut_curve(*p, num=sim.CURVE_SAMPLES).numpy().astype(np.float64)
    pad, shrink = source_cfg.caustic_pad, source_cfg.cut_shrink
    for i in range(len(pos)):
        if rule[i] == sim.RULE_A:
            c = caustic[i].mean(axis=0)
            off = caustic[i] - c
            norm = np.linalg.norm(off, axis=1, keepdims=True)
            poly = caustic[i] + pad * np.divide(off, norm, out=np.zeros_like(off), where=norm > 0)
            # docs/design.md §3.3 step 5: a point-like caustic leaves the disc of radius pad.
            inside = (matplotlib.path.Path(poly).contains_point(pos[i], radius=1e-6)
                      or np.hypot(*(pos[i] - c)) <= pad + 1e-6)
        else:
            c = cut[i].mean(axis=0)
            poly = c + shrink * (cut[i] - c)
            inside = matplotlib.path.Path(poly).contains_point(pos[i], radius=1e-6)
        assert inside, (i, rule[i], pos[i], params[i].numpy())
    # rule_a_prob = 0.5: the fraction of rule A is within 4 binomial sd (0.035) of 0.5.
    assert abs(np.mean(rule == sim.RULE_A) - 0.5) < 0.15


def test_sis_rule_a_places_within_the_pad_disc():
    # eps = 0: the caustic is the point (x_L, y_L); rule A must fall in the 0.15" disc.
    source_cfg = dataclasses.replace(config_lib.SourceConfig(), rule_a_prob=1.0)
    seeds = sim.example_seeds(2, "train", 0, 64)
    params = tf.tile(tf.constant([[1.0, 0.0, 0.0, 0.02, -0.03]], tf.float32), [64, 1])
    placed = sim.place_sources(seeds, params, source_cfg)
    pos = placed["position"].numpy()
    r = np.hypot(pos[:, 0] - 0.02, pos[:, 1] + 0.03)
    assert np.all(r <= 0.15 + 1e-6)
    assert np.mean(placed["found"].numpy()) > 0.9  # pi/4 per draw, 16 draws: misses ~1e-11
    assert r.std() > 0.02  # not collapsed onto the centre


# ---------------------------------------------------------------------------
# Failures
# ---------------------------------------------------------------------------

def test_impossible_config_fails_fast_naming_the_key(cfg, stamps):
    bad = _with(cfg, simulate={"min_magnification": 1e6})
    start = time.perf_counter()
    with pytest.raises(sim.SimulationError, match="simulate.min_magnification"):
        sim.simulate_batch(sim.example_seeds(0, "train", 0, 2), bad, stamps)
    with pytest.raises(ValueError, match="simulate.min_magnification"):
        ensai_tf.simulate(2, config=bad)
    # theta_E >= 3 arcsec with q >= 0.9 puts every critical curve outside a 3.84" image.
    far = _with(cfg, lens={"theta_e": (3.0, 3.0), "epsilon": (0.0, 0.1)})
    with pytest.raises(sim.SimulationError, match="lens.theta_e"):
        sim.simulate_batch(sim.example_seeds(0, "train", 0, 2), far, stamps)
    assert time.perf_counter() - start < 5.0


def test_exhausted_attempts_raise_with_count_and_keys(cfg, stamps):
    # Feasible in principle, never met in 2 attempts: the loop must stop and say so.
    bad = _with(cfg, simulate={"min_magnification": 5000.0, "max_attempts": 2})
    seeds = sim.example_seeds(0, "train", 0, 3)
    with pytest.raises(sim.SimulationError, match=r"3 of 3 examples.*simulate.max_attempts = 2"):
        sim.simulate_batch(seeds, bad, stamps)
    graph = tf.function(lambda s: sim.simulate_batch(s, bad, stamps))
    with pytest.raises(tf.errors.InvalidArgumentError, match="simulate.min_magnification"):
        graph(seeds)


def test_bad_seed_shape_is_a_clear_error(cfg):
    with pytest.raises(InputError, match=r"\(B, 2\)"):
        sim.simulate_batch(tf.constant([1, 2], tf.int64), cfg, None)


# ---------------------------------------------------------------------------
# Edges of the priors, lens light, shear
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("theta_e", [0.1, 3.0])
@pytest.mark.parametrize("eps", [0.0, 0.9])
def test_no_nan_at_the_edges_of_the_priors(cfg, stamps, theta_e, eps):
    # Acceptance switched off so that every edge draw is rendered and returned as is.
    edge = _with(cfg, lens={"theta_e": (theta_e, theta_e), "epsilon": (eps, eps)},
                 simulate={"min_magnification": 0.0, "min_containment": 0.0})
    out = sim.simulate_batch(sim.example_seeds(7, "train", 0, 3), edge, stamps)
    for key, value in out.items():
        assert np.all(np.isfinite(value.numpy())), key
    assert np.all(out["attempts"].numpy() == 1)
    np.testing.assert_allclose(out["params"].numpy()[:, 0], theta_e, rtol=1e-6)


def test_lens_light_is_centred_on_the_lens(cfg, stamps):
    on = _with(cfg, simulate={"lens_light": True}, lens={"center": (-0.05, 0.05)})
    out = {k: v.numpy() for k, v in
           sim.simulate_batch(sim.example_seeds(4, "train", 0, 3), on, stamps).items()}
    light_images = out["lens_light"][..., 0]
    assert light_images.shape == out["arcs"].shape[:3]
    x, y = conventions.pixel_grid(on.image.npix)
    for image, p in zip(light_images, out["params"]):
        peak = image.max()
        assert 0.3 * (1 - 1e-5) <= peak <= 10.0 * (1 + 1e-5)  # docs/design.md §4 [R] amplitude range
        # Centroid of the bright core (> half the peak, symmetric about the centre):
        # within one pixel of (x_L, y_L).
        core = np.where(image > 0.5 * peak, image, 0.0)
        cx, cy = (core * x).sum() / core.sum(), (core * y).sum() / core.sum()
        assert math.hypot(cx - p[3], cy - p[4]) < conventions.PIXEL_SCALE
    # Lens light does not change the arcs (drawn from a separate stream).
    off = sim.simulate_batch(sim.example_seeds(4, "train", 0, 3), _with(
        cfg, lens={"center": (-0.05, 0.05)}), stamps)
    np.testing.assert_array_equal(off["arcs"].numpy(), out["arcs"])


def test_shear_outputs_when_enabled(cfg, stamps):
    on = _with(cfg, lens={"shear": True})
    out = sim.simulate_batch(sim.example_seeds(5, "train", 0, 2), on, stamps)
    gamma = np.hypot(out["gamma_1"].numpy(), out["gamma_2"].numpy())
    assert np.all(gamma <= 0.3 + 1e-6) and np.all(np.isfinite(out["arcs"].numpy()))


# ---------------------------------------------------------------------------
# Contact sheet
# ---------------------------------------------------------------------------

def test_contact_sheet_writes_a_png_with_curves_and_masks(batch, tmp_path):
    p = batch["params"][:2]
    curves = [{"caustic": np.array([[0.0, 0.0], [0.1, 0.1], [0.0, 0.2]]),
               "critical": np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])}, None]
    masks = np.zeros(batch["arcs"][:2].shape, bool)
    masks[0, :5, :5] = True
    path = plotting.contact_sheet(batch["arcs"][:2], tmp_path / "sheet.png", params=p,
                                  curves=curves, masks=masks, ncols=2)
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(InputError, match="params has 1 entries for 2 images"):
        plotting.contact_sheet(batch["arcs"][:2], tmp_path / "bad.png", params=p[:1])
