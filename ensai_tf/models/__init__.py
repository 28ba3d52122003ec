"""The four paper networks, the project's residual network and their registry (docs/design.md §6.5).

``build_model(name, input_shape, **kwargs)`` builds one of ``MODEL_BUILDERS``;
``min_input_side(name)`` is the smallest square input it accepts. The
combiner (docs/design.md §7.4) lives in :mod:`ensai_tf.models.combiner`.
"""

import types

from ensai_tf.conventions import IMAGE_SHAPE, PAPER_ORDER
from ensai_tf.models import alexnet, blocks, ensai_net, inception_v4, overfeat, resnet

__all__ = ["MODEL_BUILDERS", "PAPER_ORDER", "build_model", "accepted_sides", "min_input_side"]

MODEL_BUILDERS = types.MappingProxyType({
    "inception_v4": inception_v4.build_inception_v4,
    "alexnet": alexnet.build_alexnet,
    "overfeat": overfeat.build_overfeat,
    "ensai_net": ensai_net.build_ensai_net,
    "resnet": resnet.build_resnet,
})
"""Architecture name -> builder ``(input_shape, num_outputs, name, ...) -> keras.Model``."""


_ACCEPTS = types.MappingProxyType({
    "inception_v4": inception_v4.accepts_side,
    "alexnet": alexnet.accepts_side,
    "overfeat": overfeat.accepts_side,
    "ensai_net": ensai_net.accepts_side,
    "resnet": resnet.accepts_side,
})


def _check_name(name):
    if name not in MODEL_BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODEL_BUILDERS)}")


def accepted_sides(name):
    """Input sides, pixels (below ``blocks.MAX_SEARCH_SIDE``), that ``name`` accepts.

    Args:
        name: one of ``MODEL_BUILDERS``.

    Returns:
        list[int]: the accepted square sides, pixels, increasing.

    Raises:
        ValueError: unknown name.
    """
    _check_name(name)
    return blocks.accepted_sides(_ACCEPTS[name])


def min_input_side(name):
    """Smallest square input side, pixels, that architecture ``name`` accepts.

    Args:
        name: one of ``MODEL_BUILDERS``.

    Returns:
        int: the side, pixels.

    Raises:
        ValueError: unknown name.
    """
    return accepted_sides(name)[0]


def build_model(name, input_shape=IMAGE_SHAPE, **kwargs):
    """Build a network by name (docs/design.md §6.5).

    Args:
        name: one of ``MODEL_BUILDERS`` (the paper's ``"inception_v4"``,
            ``"alexnet"``, ``"overfeat"``, ``"ensai_net"``, and ``"resnet"``).
        input_shape: ``(H, W, C)``, pixels, C = 1 or 2 bands (default 192x192x1).
        **kwargs: passed to the builder (``num_outputs``, ``name``, and
            ``bn_mode`` for Inception-v4).

    Returns:
        The functional ``keras.Model`` (images -> float32 ``(B, 5)``).

    Raises:
        ValueError: unknown name, or an input shape the architecture cannot
            take (the message gives the smallest input it accepts).
    """
    _check_name(name)
    return MODEL_BUILDERS[name](input_shape=input_shape, **kwargs)
