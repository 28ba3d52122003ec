"""Symmetry-averaged prediction over the eight flips and rotations of the image (beyond the paper).

The lens problem has the symmetry of the square pixel grid. The origin lies
midway between pixels 95 and 96 on both axes (docs/design.md §0), so flipping the rows,
flipping the columns or transposing a ``192 x 192`` image is an exact
permutation of its pixels, and it maps sky coordinates ``(x, y)`` to
``M (x, y)`` with ``M`` one of the eight orthogonal matrices of the dihedral
group D4. A lens with parameters ``p`` imaged through ``M`` is the lens
``M . p``:

* ``theta_E`` is unchanged;
* the lens centre moves to ``M (x_L, y_L)``;
* the ellipticity moves to ``M (e_x, e_y)`` up to parity. ``e`` is the major
  axis direction turned by -90 deg (``e = eps (cos phi, sin phi)`` with the
  axis at ``phi + 90 deg``), so it turns with the axis under a rotation; under
  a reflection ``S`` it becomes ``-S e``, which is the parity twin of ``S e``
  (docs/design.md §2.3);
* the external shear matrix ``Gamma = [[g1, g2], [g2, -g1]]`` becomes
  ``M Gamma M^T``.

The training data are statistically invariant under these maps (isotropic
priors, PSFs, noise and masks), so a network's prediction for ``M image``,
mapped back with ``M^-1``, is another estimate of the same lens.
:func:`symmetrize` averages the eight, after aligning each ellipticity with
the identity's prediction by the one ``parity_correct`` of the losses. The
average removes the part of the network's error that is not equivariant, at
eight times the cost of a prediction. The lens-centre prior of the training
data is not exactly symmetric (integer shifts of -7 to +6 pixels, docs/design.md §5.6),
so a lens within a pixel of the training range's edge is mapped just outside
it by some elements.
"""

import itertools

import keras
import numpy as np
from keras import ops

from ensai_tf import conventions
from ensai_tf.errors import InputError
from ensai_tf.losses import parity_correct

__all__ = [
    "AXIS_VIEWS",
    "DIHEDRAL_GROUP",
    "SWAPPED_AXIS_VIEWS",
    "VIEW_SETS",
    "DihedralImages",
    "DihedralParams",
    "coordinate_matrix",
    "transform_images",
    "transform_params",
    "symmetrize",
]

DIHEDRAL_GROUP = tuple(itertools.product((False, True), repeat=3))
"""The eight elements of D4 as ``(transpose, flip_rows, flip_cols)``, identity first.

An element acts on ``img[row, col]`` by transposing first (``img[col, row]``),
then reversing the rows, then reversing the columns.
"""

VIEW_SETS = {
    1: DIHEDRAL_GROUP[:1],
    2: (DIHEDRAL_GROUP[0], DIHEDRAL_GROUP[4]),
    4: tuple(DIHEDRAL_GROUP[i] for i in (0, 3, 5, 6)),
    8: DIHEDRAL_GROUP,
}
"""Views averaged by a combined network with ``train.combine_views`` = 1, 2, 4 or 8.

1: the image as given; 2: and its transpose (x and y swapped, which also
averages the e_x and e_y outputs' errors); 4: the four rotations; 8: all of
D4 (docs/design.md §8.6).
"""


AXIS_VIEWS = DIHEDRAL_GROUP[:4]
"""The four views that keep the x and y axes: the image, its two flips and its half-turn.

None of them swaps the roles of e_x and e_y (a flip negates one of them, which
parity undoes; the half-turn negates both), so a network better at one than
the other keeps that advantage when averaged over them, where a quarter turn
would mix the two (docs/design.md §8.6)."""

SWAPPED_AXIS_VIEWS = DIHEDRAL_GROUP[4:]
"""The transposes of :data:`AXIS_VIEWS`: the four views that swap x with y and e_x with e_y,
so that a network's e_y output, mapped back, estimates the image's e_x (docs/design.md §8.6)."""


def _check_element(element):
    try:
        valid = len(element) == 3 and all(v in (0, 1) for v in element)
    except TypeError:
        valid = False
    if not valid:
        raise InputError(f"symmetry element {element!r} is not a (transpose, flip_rows, "
                         "flip_cols) triple of booleans")
    return tuple(bool(v) for v in element)


def coordinate_matrix(element):
    """The 2x2 matrix ``M`` by which an element moves sky coordinates ``(x, y)``.

    Args:
        element: ``(transpose, flip_rows, flip_cols)``, one of
            :data:`DIHEDRAL_GROUP`.

    Returns:
        ``(2, 2)`` float64 orthogonal matrix: the pixel at arcsec ``(x, y)``
        (x = column, y = row) of the input is at ``M (x, y)`` in the output.

    Raises:
        InputError: not an element of :data:`DIHEDRAL_GROUP`.
    """
    transpose, flip_rows, flip_cols = _check_element(element)
    m = np.eye(2)
    if transpose:
        m = np.array([[0.0, 1.0], [1.0, 0.0]]) @ m
    if flip_rows:
        m = np.diag([1.0, -1.0]) @ m
    if flip_cols:
        m = np.diag([-1.0, 1.0]) @ m
    return m


def transform_images(images, element):
    """Apply an element of D4 to a batch of images (an exact pixel permutation).

    Args:
        images: ``(B, npix, npix, C)`` array (0.04 arcsec pixels,
            ``img[row, col]``).
        element: ``(transpose, flip_rows, flip_cols)``.

    Returns:
        A C-contiguous array of the same shape and dtype.

    Raises:
        InputError: not a batch of square images, or a bad element.
    """
    transpose, flip_rows, flip_cols = _check_element(element)
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] != images.shape[2]:
        raise InputError(f"images of shape {images.shape} are not a (B, npix, npix, C) batch of "
                         "square images")
    if transpose:
        images = np.swapaxes(images, 1, 2)
    if flip_rows:
        images = images[:, ::-1]
    if flip_cols:
        images = images[:, :, ::-1]
    return np.ascontiguousarray(images)


def transform_params(params, element, inverse=False):
    """The parameters of the lens seen through an element of D4 (or its inverse).

    Args:
        params: ``(N, 5)`` targets ``(theta_E, e_x, e_y, x_L, y_L)`` (arcsec,
            -, -, arcsec, arcsec), or ``(N, 7)`` with the shear
            ``(gamma_1, gamma_2)`` appended.
        element: ``(transpose, flip_rows, flip_cols)``.
        inverse: apply ``M^-1 = M^T`` instead of ``M``.

    Returns:
        ``(N, 5 or 7)`` float64: theta_E unchanged, ``M e``, ``M (x_L, y_L)``
        and the shear of ``M Gamma M^T``. ``M e`` is the ellipticity up to
        parity (see the module docstring).

    Raises:
        InputError: a width other than 5 or 7, or a bad element.
    """
    params = np.array(params, dtype=np.float64, ndmin=2)
    if params.shape[-1] not in conventions.TARGET_COUNTS:
        raise InputError(f"parameters of width {params.shape[-1]} are neither the 5 lens "
                         "targets nor the 7 with the shear")
    m = coordinate_matrix(element)
    if inverse:
        m = m.T
    out = params.copy()
    e = list(conventions.ELLIPTICITY_INDICES)
    pos = [int(conventions.Param.X_L), int(conventions.Param.Y_L)]
    out[:, e] = params[:, e] @ m.T
    out[:, pos] = params[:, pos] @ m.T
    if params.shape[-1] > conventions.NUM_PARAMS:
        g1, g2 = params[:, -2], params[:, -1]
        gamma = np.stack([np.stack([g1, g2], -1), np.stack([g2, -g1], -1)], -2)
        gamma = m @ gamma @ m.T
        out[:, -2], out[:, -1] = gamma[:, 0, 0], gamma[:, 0, 1]
    return out


def symmetrize(predict_fn, elements=DIHEDRAL_GROUP):
    """Wrap a predictor so that it averages its predictions over flips and rotations.

    Args:
        predict_fn: maps a ``(B, npix, npix, 1)`` float32 array to a
            ``(B, 5)`` or ``(B, 7)`` array of point estimates (the function
            of :func:`ensai_tf.inference.load_predictor`).
        elements: the group elements to average over (default all eight of
            :data:`DIHEDRAL_GROUP`); the first is the parity reference.

    Returns:
        A function of the same signature returning the ``(B, 5 or 7)``
        float64 average of ``M^-1 . predict_fn(M image)`` over ``elements``,
        each aligned in parity with the first element's prediction.

    Raises:
        InputError (when the returned function is called): a Gaussian-head
        output (only point estimates are averaged), or bad images.
    """
    elements = [_check_element(g) for g in elements]
    if not elements:
        raise InputError("symmetrize needs at least one symmetry element")

    def averaged(images):
        images = np.asarray(images, dtype=np.float32)
        estimates = []
        for g in elements:
            out = np.asarray(predict_fn(transform_images(images, g)), dtype=np.float64)
            if out.ndim != 2 or out.shape[-1] not in conventions.TARGET_COUNTS:
                raise InputError(f"symmetry averaging takes point estimates only (5 or 7 "
                                 f"numbers per lens); this model outputs {out.shape[-1]} (a "
                                 "Gaussian head)")
            estimates.append(transform_params(out, g, inverse=True))
        reference = estimates[0]
        aligned = [reference] + [ops.convert_to_numpy(parity_correct(reference, p))
                                 for p in estimates[1:]]
        return np.mean(np.asarray(aligned, dtype=np.float64), axis=0)

    return averaged


@keras.saving.register_keras_serializable(package="ensai_tf")
class DihedralImages(keras.layers.Layer):
    """Images seen through one element of D4 (an exact pixel permutation).

    Args:
        element: ``(transpose, flip_rows, flip_cols)`` of
            :data:`ensai_tf.symmetry.DIHEDRAL_GROUP`.
    """

    def __init__(self, element, **kwargs):
        super().__init__(**kwargs)
        self.element = [bool(v) for v in element]

    def call(self, images):
        transpose, flip_rows, flip_cols = self.element
        if transpose:
            images = ops.transpose(images, (0, 2, 1, 3))
        if flip_rows:
            images = ops.flip(images, axis=1)
        if flip_cols:
            images = ops.flip(images, axis=2)
        return images

    def get_config(self):
        config = super().get_config()
        config.update({"element": self.element})
        return config


@keras.saving.register_keras_serializable(package="ensai_tf")
class DihedralParams(keras.layers.Layer):
    """Lens parameters mapped back from the frame of one D4 element (``M^-1 p``).

    Input and output ``(B, 5)``, target units; a linear map
    (:func:`ensai_tf.symmetry.transform_params` with ``inverse=True``).

    Args:
        element: ``(transpose, flip_rows, flip_cols)``.
    """

    def __init__(self, element, **kwargs):
        super().__init__(**kwargs)
        self.element = [bool(v) for v in element]
        self.matrix = transform_params(np.eye(conventions.NUM_PARAMS), tuple(self.element), inverse=True)

    def call(self, params):
        params = ops.cast(params[:, :conventions.NUM_PARAMS], "float32")
        return ops.matmul(params, ops.convert_to_tensor(self.matrix, "float32"))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], conventions.NUM_PARAMS)

    def get_config(self):
        config = super().get_config()
        config.update({"element": self.element})
        return config
