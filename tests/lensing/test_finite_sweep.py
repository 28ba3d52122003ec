"""Finite-output sweep of the lensing functions over every edge of the priors.

``lens_sweep(n)`` builds ``n`` draws: first every combination of the edges of
each prior range (docs/design.md §3.1, §2.2: theta_E, epsilon including 0, the SIS
threshold and the maximum, phi, the lens centre, shear off and at its
maximum), each at several image-plane points (the exact lens centre, a point
1e-7 arcsec from it, a corner of the ray-traced field, a random point); then
random draws in which every parameter independently takes an edge value with
probability 0.3. The pure functions of ``ensai_tf.lensing`` run vectorised on
all draws at once and must return finite values (and finite gradients of the
deflection). The default run uses 10^5 draws (about a second);
``ENSAI_SWEEP_DRAWS`` sets another number (``tools/stress.py`` raises it).

A few end-to-end images at the edges (``simulate_batch``, and under ``-m
slow`` the public ``ensai_tf.simulate``, followed by ``observe`` for
training and evaluation) check the full chain.
"""

import dataclasses
import itertools
import math
import os

import numpy as np
import pytest
import tensorflow as tf

import ensai_tf
from ensai_tf import config as config_lib
from ensai_tf.data import observe as observe_lib
from ensai_tf.data import simulate as sim
from ensai_tf.data import sources
from ensai_tf.lensing import caustics, raytrace, shear, sie

N_DRAWS = int(os.environ.get("ENSAI_SWEEP_DRAWS", "100000"))
"""Draws of the sweep; 10^5 by default."""

PRIOR = config_lib.LensPrior()
CONFIG_EPS_MAX = 0.99
"""Largest epsilon tried beyond the prior's 0.9: the config accepts any value below 1."""
FIELD_HALF = 0.5 * 192 * 0.04 + 0.5
"""Half side of the ray-traced field with padding, arcsec."""


def _edges():
    """Edge values of every range, in the units of the lens functions (arcsec, radians)."""
    eps_sis = 0.5 * sie.SIS_THRESHOLD**2  # f'^2 = eps (2 - eps) at the SIS switch
    return {
        "theta_e": list(PRIOR.theta_e),
        "eps": [0.0, 0.5 * eps_sis, eps_sis, 2.0 * eps_sis, 1e-4, PRIOR.epsilon[1], CONFIG_EPS_MAX],
        "phi": [math.radians(d) for d in (0.0, 90.0, 180.0, 270.0, 360.0)],
        "centre": [(x, y) for x in PRIOR.center for y in PRIOR.center] + [(0.0, 0.0)],
        "shear": [(0.0, 0.0)] + [(PRIOR.shear_gamma[1], math.radians(a))
                                 for a in PRIOR.shear_angle_deg],
    }


def lens_sweep(n, seed=0):
    """``n`` draws covering every edge combination, then edge-biased random draws.

    Returns:
        dict of float32 ``(n,)`` arrays: ``x, y`` (arcsec), ``theta_e``
        (arcsec), ``e_x, e_y``, ``x_l, y_l`` (arcsec), ``gamma_1, gamma_2``;
        and ``n_edge``, the number of leading pure-edge draws.
    """
    rng = np.random.default_rng(seed)
    e = _edges()
    rows = []
    for theta, eps, phi, (xl, yl), (gamma, ang) in itertools.product(
            e["theta_e"], e["eps"], e["phi"], e["centre"], e["shear"]):
        corner = (xl + FIELD_HALF, yl - FIELD_HALF)
        rand = tuple(rng.uniform(-FIELD_HALF, FIELD_HALF, 2))
        for px, py in ((xl, yl), (xl + 1e-7, yl), corner, rand):
            rows.append((px, py, theta, eps, phi, xl, yl, gamma, ang))
    edge = np.array(rows, dtype=np.float64)
    n_edge = min(len(edge), n)
    m = n - n_edge

    def pick(lo, hi, edges):
        u = rng.uniform(lo, hi, m)
        use_edge = rng.uniform(size=m) < 0.3
        return np.where(use_edge, rng.choice(np.asarray(edges, np.float64), m), u)

    centre = np.array(e["centre"])[rng.integers(0, len(e["centre"]), m)]
    random_rows = np.stack([
        rng.uniform(-FIELD_HALF, FIELD_HALF, m), rng.uniform(-FIELD_HALF, FIELD_HALF, m),
        pick(*PRIOR.theta_e, e["theta_e"]), pick(*PRIOR.epsilon, e["eps"]),
        pick(0.0, 2 * math.pi, e["phi"]),
        np.where(rng.uniform(size=m) < 0.3, centre[:, 0], rng.uniform(*PRIOR.center, m)),
        np.where(rng.uniform(size=m) < 0.3, centre[:, 1], rng.uniform(*PRIOR.center, m)),
        np.where(rng.uniform(size=m) < 0.5, 0.0, pick(*PRIOR.shear_gamma, PRIOR.shear_gamma)),
        pick(0.0, math.pi, [0.0, math.pi]),
    ], axis=1)
    table = np.concatenate([edge[:n_edge], random_rows])
    # points on top of the lens centre stay exactly on it in float32
    px, py, theta, eps, phi, xl, yl, gamma, ang = table.T
    g1, g2 = (np.asarray(v, np.float64) for v in shear.shear_components(gamma, ang))
    out = {"x": px, "y": py, "theta_e": theta, "e_x": eps * np.cos(phi), "e_y": eps * np.sin(phi),
           "x_l": xl, "y_l": yl, "gamma_1": g1, "gamma_2": g2}
    out = {k: np.asarray(v, np.float32) for k, v in out.items()}
    out["n_edge"] = n_edge
    return out


@pytest.fixture(scope="module")
def draws():
    return lens_sweep(N_DRAWS)


def _assert_finite(name, *values, where=None):
    for k, v in enumerate(values):
        v = np.asarray(v)
        bad = ~np.isfinite(v)
        if where is not None:
            bad &= where.reshape(where.shape + (1,) * (v.ndim - where.ndim))
        assert not bad.any(), (f"{name}[{k}]: {int(bad.sum())} non-finite of {v.size}, "
                               f"first at draw {np.argwhere(bad)[0].tolist()}")


def test_sweep_covers_every_edge(draws):
    e = _edges()
    n_combos = math.prod(len(v) for v in e.values())
    assert draws["n_edge"] == min(4 * n_combos, N_DRAWS)
    assert len(draws["x"]) == N_DRAWS
    eps = np.hypot(draws["e_x"], draws["e_y"])
    for value in (0.0, PRIOR.epsilon[1], CONFIG_EPS_MAX):
        assert np.any(np.isclose(eps, value, atol=1e-7)), value


def test_sie_deflection_and_its_gradients_are_finite(draws):
    names = ("theta_e", "e_x", "e_y", "x_l", "y_l")
    params = [tf.constant(draws[k]) for k in names]
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(params)
        a_x, a_y = sie.sie_deflection(draws["x"], draws["y"], *params)
    _assert_finite("sie_deflection", a_x, a_y)
    # |alpha| <= theta_E / sqrt(q): a sanity bound, not only finiteness
    q = 1.0 - np.hypot(draws["e_x"], draws["e_y"])
    assert np.all(np.hypot(a_x, a_y) <= draws["theta_e"] / np.sqrt(q) * (1 + 1e-4) + 1e-6)
    grads = tape.gradient(a_x, params) + tape.gradient(a_y, params)
    _assert_finite("d alpha / d params", *grads)


def test_convergence_is_finite_off_centre(draws):
    kappa = sie.sie_convergence(draws["x"], draws["y"], draws["theta_e"], draws["e_x"],
                                draws["e_y"], draws["x_l"], draws["y_l"]).numpy()
    off = (draws["x"] != draws["x_l"]) | (draws["y"] != draws["y_l"])
    _assert_finite("sie_convergence", kappa, where=off)
    assert np.all(kappa[off] > 0)


def test_shear_and_lens_equation_are_finite(draws):
    s_x, s_y = shear.shear_deflection(draws["x"], draws["y"], draws["gamma_1"], draws["gamma_2"],
                                      draws["x_l"], draws["y_l"])
    _assert_finite("shear_deflection", s_x, s_y)
    params = np.stack([draws[k] for k in ("theta_e", "e_x", "e_y", "x_l", "y_l")], axis=1)
    beta = raytrace.lens_equation(draws["x"][:, None, None], draws["y"][:, None, None], params,
                                  draws["gamma_1"], draws["gamma_2"])
    _assert_finite("lens_equation", *beta)


def test_critical_curve_caustic_and_cut_are_finite(draws):
    args = [draws[k] for k in ("theta_e", "e_x", "e_y", "x_l", "y_l")]
    critical = caustics.tangential_critical_curve(*args, num=32)
    _assert_finite("tangential_critical_curve", critical)
    _assert_finite("tangential_caustic", caustics.tangential_caustic(*args, num=32))
    _assert_finite("cut_curve", caustics.cut_curve(*args, num=32))
    area = caustics.polygon_area(critical).numpy()
    _assert_finite("critical-curve area", area)
    # a 32-gon inscribed in the critical ellipse: a little under pi theta_E^2
    assert np.all(area > 0) and np.all(area <= math.pi * draws["theta_e"] ** 2 * (1 + 1e-5))


# ---------------------------------------------------------------- end to end at the edges


def _edge_configs():
    """Prior ranges collapsed onto their edges, acceptance off, a 64-pixel field."""
    base = config_lib.get_preset("smoke")
    cases = [
        dict(theta_e=(3.0, 3.0), epsilon=(0.9, 0.9), phi_deg=(360.0, 360.0),
             center=(0.05, 0.05), shear=True, shear_gamma=(0.3, 0.3),
             shear_angle_deg=(180.0, 180.0)),
        dict(theta_e=(0.1, 0.1), epsilon=(0.0, 0.0), phi_deg=(0.0, 0.0),
             center=(-0.05, -0.05), shear=True, shear_gamma=(0.0, 0.0),
             shear_angle_deg=(0.0, 0.0)),
        dict(theta_e=(0.1, 0.1), epsilon=(0.9, 0.9), phi_deg=(90.0, 90.0),
             center=(0.05, 0.05), shear=False),
    ]
    for lens in cases:
        cfg = dataclasses.replace(
            base, image=dataclasses.replace(base.image, npix=64),
            lens=dataclasses.replace(base.lens, **lens),
            simulate=dataclasses.replace(base.simulate, min_magnification=0.0,
                                         min_containment=0.0))
        yield config_lib.validate_config(cfg)


def _check_simulated_and_observed(out, cfg):
    for key, value in out.items():
        assert np.all(np.isfinite(np.asarray(value, np.float64))), key
    assert np.all(np.asarray(out["arcs"]).max(axis=(1, 2, 3)) > 0)
    seeds = tf.constant([[1, 2], [3, 4]], tf.int64)
    for training in (True, False):
        obs = observe_lib.observe(tf.constant(out["arcs"]), tf.constant(out["params"]), seeds,
                                  cfg.observe, training=training)
        assert np.all(np.isfinite(obs["image"].numpy())) and np.all(
            np.isfinite(obs["params"].numpy()))
        # finite at the first pass: the redraw guard was not needed
        assert np.all(obs["draws"]["redraw_attempt"].numpy() == 0)


@pytest.mark.parametrize("case", range(3))
def test_simulate_and_observe_are_finite_at_the_prior_edges(case):
    """Eager ``simulate_batch`` (about 2 s a case) and ``observe`` at each edge case."""
    cfg = list(_edge_configs())[case]
    out = sim.simulate_batch(sim.example_seeds(11, "train", 0, 2), cfg,
                             sources.load_stamp_library("train"))
    _check_simulated_and_observed({k: v.numpy() for k, v in out.items()}, cfg)


@pytest.mark.slow
def test_public_simulate_is_finite_at_the_prior_maxima():
    """``ensai_tf.simulate`` (the traced Dataset.map path, 10-20 s to trace) at every maximum."""
    cfg = list(_edge_configs())[0]
    _check_simulated_and_observed(ensai_tf.simulate(2, seed=11, config=cfg, split="train",
                                                    batch_size=2), cfg)
