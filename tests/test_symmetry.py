"""Symmetry averaging over D4: exact closed-form checks against the lens model."""

import numpy as np
import pytest

from ensai_tf import conventions, symmetry
from ensai_tf.errors import InputError
from ensai_tf.lensing import shear, sie

GROUP = symmetry.DIHEDRAL_GROUP


def test_group_has_eight_distinct_orthogonal_elements_identity_first():
    mats = [symmetry.coordinate_matrix(g) for g in GROUP]
    assert len({m.tobytes() for m in mats}) == 8
    for m in mats:
        np.testing.assert_array_equal(m @ m.T, np.eye(2))
    np.testing.assert_array_equal(mats[0], np.eye(2))


@pytest.mark.parametrize("element", GROUP)
def test_image_transform_moves_pixel_coordinates_by_the_matrix(element):
    # the origin is midway between pixels 95 and 96, so the map is exact: out(M t) = in(t)
    x, y = conventions.pixel_grid()
    f = lambda x, y: 1.0 * x + 3.0 * y + 7.0 * x * y + 2.0 * x ** 2  # no symmetry of its own
    img = f(x, y)[None, :, :, None]
    out = symmetry.transform_images(img, element)[0, :, :, 0]
    m = symmetry.coordinate_matrix(element)
    xi, yi = np.einsum("ij,jrc->irc", m.T, np.stack([x, y]))  # M^-1 t for every output pixel
    np.testing.assert_allclose(out, f(xi, yi), rtol=0, atol=1e-12)


@pytest.mark.parametrize("element", GROUP)
def test_sie_plus_shear_seen_through_an_element_is_the_transformed_lens(element):
    # alpha_{M.p}(M t) = M alpha_p(t) and kappa_{M.p}(M t) = kappa_p(t), closed form,
    # at 500 random points; e goes to M e only up to parity, which the deflection ignores
    rng = np.random.default_rng(3)
    p = np.array([[1.3, 0.35, -0.2, 0.04, -0.03, 0.08, -0.05]])  # theta_E, e, x_L, y_L, gamma
    t = rng.uniform(-2.0, 2.0, size=(2, 500))
    m = symmetry.coordinate_matrix(element)
    q = symmetry.transform_params(p, element)

    def alpha(params, x, y):
        th, ex, ey, xl, yl, g1, g2 = params[0]
        ax, ay = sie.sie_deflection(x, y, th, ex, ey, xl, yl)
        sx, sy = shear.shear_deflection(x, y, g1, g2, xl, yl)
        return np.stack([np.asarray(ax) + np.asarray(sx), np.asarray(ay) + np.asarray(sy)])

    mt = m @ t
    np.testing.assert_allclose(alpha(q, *mt), m @ alpha(p, *t), rtol=0, atol=1e-6)
    kappa_p = np.asarray(sie.sie_convergence(t[0], t[1], *p[0, :5]))
    kappa_q = np.asarray(sie.sie_convergence(mt[0], mt[1], *q[0, :5]))
    np.testing.assert_allclose(kappa_q, kappa_p, rtol=1e-6)


def test_transform_params_inverse_undoes_and_theta_e_is_invariant():
    p = np.random.default_rng(0).normal(size=(4, 7))
    for g in GROUP:
        back = symmetry.transform_params(symmetry.transform_params(p, g), g, inverse=True)
        np.testing.assert_allclose(back, p, atol=1e-14)
        np.testing.assert_array_equal(symmetry.transform_params(p, g)[:, 0], p[:, 0])


def _moment_estimator(images):
    """An exactly equivariant estimator: flux centroid, size and axis from second moments."""
    x, y = conventions.pixel_grid()
    out = []
    for img in np.asarray(images, dtype=np.float64)[..., 0]:
        w = img / img.sum()
        cx, cy = (w * x).sum(), (w * y).sum()
        dx, dy = x - cx, y - cy
        q = np.array([[(w * dx * dx).sum(), (w * dx * dy).sum()],
                      [(w * dx * dy).sum(), (w * dy * dy).sum()]])
        vals, vecs = np.linalg.eigh(q)
        major = vecs[:, 1]                      # the axis is at phi + 90 deg
        eps = 1.0 - np.sqrt(vals[0] / vals[1])
        e = eps * np.array([major[1], -major[0]])
        out.append([np.sqrt(np.trace(q)), e[0], e[1], cx, cy])
    return np.asarray(out)


def test_symmetrize_leaves_an_exactly_equivariant_estimator_unchanged():
    x, y = conventions.pixel_grid()
    rng = np.random.default_rng(1)
    images = []
    for _ in range(3):
        x0, y0, th = rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5), rng.uniform(0, 3)
        a, b = 0.9, 0.4
        u = (x - x0) * np.cos(th) + (y - y0) * np.sin(th)
        v = -(x - x0) * np.sin(th) + (y - y0) * np.cos(th)
        images.append(np.exp(-0.5 * ((u / a) ** 2 + (v / b) ** 2)) + 0.3 * np.exp(-((x - 1) ** 2 + y ** 2) / 0.1))
    images = np.asarray(images, dtype=np.float32)[..., None]
    direct = _moment_estimator(images)
    averaged = symmetry.symmetrize(_moment_estimator)(images)
    np.testing.assert_allclose(averaged, direct, rtol=0, atol=2e-6)
    # and each element alone, mapped back, agrees up to parity
    for g in GROUP:
        one = symmetry.symmetrize(_moment_estimator, elements=[g])(images)
        flip = one.copy()
        flip[:, 1:3] *= -1
        err = np.minimum(np.abs(one - direct).max(axis=1), np.abs(flip - direct).max(axis=1))
        assert err.max() < 2e-6


def test_symmetrize_averages_a_constant_predictor_to_the_group_invariant_part():
    # the group average of M^-1 v is 0 for any vector v, and of M^-1 Gamma M for any shear;
    # theta_E is kept. Ellipticities are first aligned with the identity's (1, 0):
    # every M^-1 (1, 0) is (+-1, 0) or (0, +-1); aligned, those average to (0.5, 0).
    const = np.array([[1.2, 1.0, 0.0, 0.1, -0.07, 0.05, 0.02]])
    fn = lambda images: np.repeat(const, len(images), axis=0)
    out = symmetry.symmetrize(fn)(np.zeros((2, 192, 192, 1), np.float32))
    np.testing.assert_allclose(out[:, 0], 1.2)
    np.testing.assert_allclose(out[:, 3:], 0.0, atol=1e-15)
    np.testing.assert_allclose(out[:, 1], 0.5)
    np.testing.assert_allclose(np.abs(out[:, 2]), 0.0, atol=1e-15)


def test_symmetrize_refuses_gaussian_heads_and_bad_input():
    fn = lambda images: np.zeros((len(images), 10))
    with pytest.raises(InputError, match="Gaussian head"):
        symmetry.symmetrize(fn)(np.zeros((1, 192, 192, 1), np.float32))
    with pytest.raises(InputError, match="square images"):
        symmetry.transform_images(np.zeros((1, 192, 100, 1)), GROUP[1])
    with pytest.raises(InputError, match="symmetry element"):
        symmetry.coordinate_matrix((True, 2, False))
    with pytest.raises(InputError, match="width 6"):
        symmetry.transform_params(np.zeros((1, 6)), GROUP[0])


def test_symmetrized_untrained_cnn_is_equivariant_in_theta_e_and_centre():
    # any network becomes equivariant after the group average: f(M img) = M . f(img) for the
    # parity-free targets (theta_E, x_L, y_L), to float32 precision
    import keras

    keras.utils.set_random_seed(5)
    inputs = keras.Input((192, 192, 1))
    h = keras.layers.Conv2D(4, 5, strides=4, activation="relu")(inputs)
    h = keras.layers.Flatten()(h)
    model = keras.Model(inputs, keras.layers.Dense(5)(h))
    fn = symmetry.symmetrize(lambda im: model.predict_on_batch(im))
    img = np.random.default_rng(2).random((2, 192, 192, 1)).astype(np.float32)
    base = fn(img)
    assert np.abs(base[:, 3:]).max() > 1e-3  # a non-trivial centre, not 0 by symmetry
    for g in GROUP:
        moved = fn(symmetry.transform_images(img, g))
        expect = symmetry.transform_params(base, g)
        np.testing.assert_allclose(moved[:, [0, 3, 4]], expect[:, [0, 3, 4]], rtol=0, atol=1e-5)
