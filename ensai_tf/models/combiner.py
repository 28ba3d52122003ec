"""The combined network: frozen backbones, sign alignment, 20 weights (docs/design.md §7.4).

Order in the paper: [overfeat, ensai_net, alexnet, inception_v4] with
Overfeat as the parity reference (``models.PAPER_ORDER``); any list works.
Backbones are frozen and called with ``training=False``, so Inception's BN
moving statistics stay put (Keras transfer-learning guide).

A combined network is stored by reference to its backbone files
(:mod:`ensai_tf.models.stored_combiner`).
"""

import pathlib
import zipfile

import keras
from keras import ops

from ensai_tf.conventions import NUM_PARAMS
from ensai_tf.errors import ModelDirError
from ensai_tf.losses import parity_correct
from ensai_tf.models.loading import load_keras_model
from ensai_tf.symmetry import DIHEDRAL_GROUP, DihedralImages, DihedralParams
from ensai_tf.uncertainty import head_layout

__all__ = ["COMBINE_MODES", "ParityAlign", "PerParameterWeights", "PointEstimate",
           "aligned_views", "build_combiner", "load_backbones", "point_estimate_backbone",
           "with_views"]

COMBINE_MODES = ("per_parameter", "dense")


@keras.saving.register_keras_serializable(package="ensai_tf")
class ParityAlign(keras.layers.Layer):
    """Sign-aligns each network's ellipticity to the reference network's (docs/design.md §7.4 step 2).

    Per example and network m, ``(e_x, e_y)`` of m is negated when
    ``mean((e_ref + e_m)^2) < mean((e_ref - e_m)^2)``. This is
    :func:`ensai_tf.losses.parity_correct` with the reference network in
    place of the truth: the other three parameters are the same in both
    candidates, so comparing the 5-parameter MSEs decides exactly as
    comparing the two ellipticity terms.

    Args:
        reference: index of the reference network in the input list.

    Input:
        list of M tensors ``(B, 5)``: the networks' predictions.

    Output:
        ``(B, M, 5)`` aligned predictions, float32.
    """

    def __init__(self, reference=0, **kwargs):
        super().__init__(**kwargs)
        self.reference = int(reference)

    def build(self, input_shape):
        shapes = list(input_shape)
        if not shapes or any(len(s) != 2 or s[-1] != NUM_PARAMS for s in shapes):
            raise ValueError(f"ParityAlign takes a list of (batch, {NUM_PARAMS}) predictions, "
                             f"got shapes {shapes}")
        if not 0 <= self.reference < len(shapes):
            raise ValueError(f"reference {self.reference} is not an index of the "
                             f"{len(shapes)} networks")
        super().build(input_shape)

    def call(self, inputs):
        preds = [ops.cast(p, "float32") for p in inputs]
        ref = preds[self.reference]
        return ops.stack([parity_correct(ref, p) for p in preds], axis=1)

    def compute_output_shape(self, input_shape):
        shapes = list(input_shape)
        return (shapes[0][0], len(shapes), NUM_PARAMS)

    def get_config(self):
        config = super().get_config()
        config.update({"reference": self.reference})
        return config


@keras.saving.register_keras_serializable(package="ensai_tf")
class PerParameterWeights(keras.layers.Layer):
    """Linear combination of M networks' aligned predictions (docs/design.md §7.4 step 4).

    ``mode="per_parameter"`` (paper): ``y_j = sum_m w[m, j] * x[:, m, j]``,
    M x 5 scalars initialised to 1/M, no bias, no cross-parameter terms.
    ``mode="dense"``: a full Dense from the M*5 aligned outputs to 5 with a
    bias, initialised to the same plain average (block-diagonal 1/M, bias 0).

    Input:
        ``(B, M, 5)`` aligned predictions, target units.

    Output:
        ``(B, 5)`` combined predictions, target units.
    """

    def __init__(self, mode="per_parameter", **kwargs):
        super().__init__(**kwargs)
        if mode not in COMBINE_MODES:
            raise ValueError(f"mode must be one of {COMBINE_MODES}, got {mode!r}")
        self.mode = mode

    def build(self, input_shape):
        if len(input_shape) != 3 or input_shape[1] is None or input_shape[2] != NUM_PARAMS:
            raise ValueError(f"PerParameterWeights takes (batch, networks, {NUM_PARAMS}), "
                             f"got {tuple(input_shape)}")
        m = int(input_shape[1])
        self.num_networks = m
        if self.mode == "per_parameter":
            self.w = self.add_weight(name="w", shape=(m, NUM_PARAMS),
                                     initializer=keras.initializers.Constant(1.0 / m))
        else:
            eye = ops.convert_to_numpy(ops.tile(ops.eye(NUM_PARAMS), (m, 1))) / m
            self.kernel = self.add_weight(name="kernel", shape=(m * NUM_PARAMS, NUM_PARAMS),
                                          initializer=keras.initializers.Constant(eye))
            self.bias = self.add_weight(name="bias", shape=(NUM_PARAMS,), initializer="zeros")
        super().build(input_shape)

    def call(self, inputs):
        if self.mode == "per_parameter":
            return ops.sum(inputs * ops.cast(self.w, inputs.dtype), axis=1)
        flat = ops.reshape(inputs, (-1, self.num_networks * NUM_PARAMS))
        return ops.matmul(flat, ops.cast(self.kernel, inputs.dtype)) + ops.cast(self.bias,
                                                                                inputs.dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], NUM_PARAMS)

    def get_config(self):
        config = super().get_config()
        config.update({"mode": self.mode})
        return config


@keras.saving.register_keras_serializable(package="ensai_tf")
class PointEstimate(keras.layers.Layer):
    """The five lens parameters of a wider network output.

    Every ensai output layout puts ``(theta_E, e_x, e_y, x_L, y_L)`` first: a
    point estimate with the shear appends ``(gamma_1, gamma_2)``, a Gaussian
    head appends log-variances (and Cholesky terms) after its means
    (:mod:`ensai_tf.uncertainty`). Keeping the first five therefore gives the
    point estimate, or the predictive mean, of any of them.

    Input:
        ``(B, W)`` network output, W one of the widths
        :func:`ensai_tf.uncertainty.head_layout` knows (5, 7, 10, 14, 20, 35).

    Output:
        ``(B, 5)`` arcsec / dimensionless, the input's dtype.
    """

    def build(self, input_shape):
        if len(input_shape) != 2:
            raise ValueError(f"PointEstimate takes (batch, width) outputs, got {tuple(input_shape)}")
        head_layout(input_shape[-1])  # raises, naming the width, for an unknown layout
        super().build(input_shape)

    def call(self, inputs):
        return inputs[:, :NUM_PARAMS]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], NUM_PARAMS)


def point_estimate_backbone(model):
    """``model`` if it outputs the five parameters, else it wrapped in :class:`PointEstimate`.

    Deviation from docs/design.md §7.4, which merges the four point-estimate networks:
    a Gaussian-head or shear network (``trained_weights/alexnet_gaussian``,
    ``trained_weights/alexnet_shear``)
    joins the combination through its predictive means, which are trained on
    the same five targets in the same units.

    Args:
        model: Keras model, images ``(B, H, W, 1)`` -> ``(B, W_out)``.

    Returns:
        A model images -> ``(B, 5)`` named like ``model`` (whose own name
        gets a ``_full`` suffix when wrapped).

    Raises:
        ValueError: the output width is no known ensai layout.
    """
    width = model.outputs[0].shape[-1]
    if width == NUM_PARAMS:
        return model
    name = model.name
    model.name = f"{name}_full"
    inputs = keras.Input(shape=tuple(model.input_shape[1:]), name="images")
    outputs = PointEstimate(dtype="float32", name="point_estimate")(model(inputs))
    return keras.Model(inputs, outputs, name=name)


def aligned_views(model, inputs, elements, align_name):
    """``(views, aligned)``: ``model``'s ``(B, 5)`` predictions for each view (``elements`` of
    :data:`ensai_tf.symmetry.DIHEDRAL_GROUP`) of the images ``inputs``, mapped back to the image
    frame, and their ``(B, len(elements), 5)`` stack aligned in parity with the first by the
    :class:`ParityAlign` layer ``align_name``."""
    views = [DihedralParams(g, dtype="float32", name=f"back_{k}")(
        model(DihedralImages(g, dtype="float32", name=f"view_{k}")(inputs), training=False))
        for k, g in enumerate(elements)]
    return views, ParityAlign(reference=0, dtype="float32", name=align_name)(views)


def with_views(model, elements):
    """A point-estimate network that averages its predictions over views of the image.

    Each view is a flip or rotation of the pixel grid (docs/design.md §8.6); its
    prediction is mapped back to the image's frame, aligned in parity with the
    first view's, and the views are averaged with equal, frozen weights.

    Args:
        model: images ``(B, N, N, C)`` -> ``(B, 5)`` point estimates.
        elements: the views, elements of :data:`ensai_tf.symmetry.DIHEDRAL_GROUP`
            (``ensai_tf.symmetry.VIEW_SETS[n]``).

    Returns:
        ``model`` itself for the identity alone, else a ``keras.Model`` of the
        same name and signature that calls ``model`` once per view; ``model``
        is then renamed ``<name>_one_view``.
    """
    elements = [tuple(bool(v) for v in g) for g in elements]
    if elements == [DIHEDRAL_GROUP[0]]:
        return model
    name = model.name
    model.name = f"{name}_one_view"
    inputs = keras.Input(shape=tuple(model.input_shape[1:]), name="images")
    _, aligned = aligned_views(model, inputs, elements, "view_align")
    mean = PerParameterWeights(dtype="float32", name="view_mean", trainable=False)(aligned)
    return keras.Model(inputs, mean, name=name)


def build_combiner(backbones, reference=0, mode="per_parameter", name="combiner"):
    """The combined network of docs/design.md §7.4.

    Args:
        backbones: list of Keras models, each images ``(B, H, W, 1)`` ->
            ``(B, 5)``, all with the same input shape and distinct names.
            They are set ``trainable = False`` (shared, not copied).
        reference: index of the parity reference (0: Overfeat in the paper
            order).
        mode: ``"per_parameter"`` (20 weights for 4 networks) or ``"dense"``.
        name: model name.

    Returns:
        Functional ``keras.Model`` images -> float32 ``(B, 5)``, target units,
        whose only trainable weights are the combination weights.

    Raises:
        ValueError: empty list, mismatched input shapes, duplicate names, bad
            reference or mode.
    """
    backbones = list(backbones)
    if not backbones:
        raise ValueError("build_combiner needs at least one backbone network")
    if mode not in COMBINE_MODES:
        raise ValueError(f"mode must be one of {COMBINE_MODES}, got {mode!r}")
    if not 0 <= int(reference) < len(backbones):
        raise ValueError(f"reference {reference} is not an index of the {len(backbones)} "
                         "backbones")
    shapes = [tuple(b.input_shape[1:]) for b in backbones]
    if len(set(shapes)) != 1:
        raise ValueError(f"backbones take different input shapes {shapes}")
    names = [b.name for b in backbones]
    if len(set(names)) != len(names):
        raise ValueError(f"backbone names must be distinct, got {names}; "
                         "pass name=... when building them")
    inputs = keras.Input(shape=shapes[0], name="images")
    preds = []
    for backbone in backbones:
        backbone.trainable = False
        # training=False keeps BN in inference mode with frozen statistics
        preds.append(backbone(inputs, training=False))
    aligned = ParityAlign(reference=reference, dtype="float32", name="parity_align")(preds)
    outputs = PerParameterWeights(mode=mode, dtype="float32", name="params")(aligned)
    return keras.Model(inputs, outputs, name=name)


def load_backbones(paths):
    """Load trained networks from ``.keras`` files, without their optimiser state.

    Args:
        paths: list of ``.keras`` file paths.

    Returns:
        List of Keras models images -> ``(B, 5)``, in the given order,
        computing in float32 (:func:`ensai_tf.models.loading.float32_model`) whatever
        precision they were trained in; Gaussian-head and shear networks
        give their first five outputs (:func:`point_estimate_backbone`).

    Raises:
        ModelDirError: a path is missing, not a ``.keras`` file, or corrupt
            (the message names it).
    """
    models = []
    for path in paths:
        path = pathlib.Path(path)
        if not path.is_file():
            raise ModelDirError(f"backbone {str(path)!r} does not exist or is not a file; "
                                "give the model.keras written by 'ensai train'")
        if path.suffix != ".keras":
            raise ModelDirError(f"backbone {str(path)!r} is not a .keras file")
        try:
            # frozen backbones feed the combiner what inference will see: float32
            models.append(load_keras_model(path))
        except (OSError, ValueError, TypeError, KeyError, zipfile.BadZipFile) as err:
            raise ModelDirError(f"cannot load backbone {str(path)!r}: missing parts or "
                                f"corrupt ({type(err).__name__}: {err})") from None
        try:
            models[-1] = point_estimate_backbone(models[-1])
        except ValueError as err:
            raise ModelDirError(f"backbone {str(path)!r} cannot join the combiner: {err}") from None
    # Two networks of one architecture (an ensemble) share a name; the combiner needs distinct ones.
    seen = {}
    for model in models:
        count = seen.get(model.name, 0)
        seen[model.name] = count + 1
        if count:
            model.name = f"{model.name}_{count}"
    return models
