"""The bias-removal input layer shared by every network (docs/design.md §6.1).

The layer subtracts, per image, the minimum of a 4x4 box-filtered copy of the
image in which masked pixels (exactly 0.0, docs/design.md §0) are pushed out of the
minimum, and leaves masked pixels at exactly 0. It is parameter-free and uses
``keras.ops`` only, so it runs on any Keras backend.
"""

import keras
from keras import ops

__all__ = ["BiasRemoval", "MASKED_OFFSET", "WINDOW"]

WINDOW = 4
"""Side of the box filter, pixels (docs/design.md §6.1)."""

MASKED_OFFSET = 1000.0
"""Value added to masked pixels before box filtering (docs/design.md §6.1): any window
touching a masked pixel is inflated by at least 1000/16 = 62.5 and so drops
out of the minimum."""


@keras.saving.register_keras_serializable(package="ensai_tf")
class BiasRemoval(keras.layers.Layer):
    """Removes the per-image intensity bias, ignoring masked pixels (docs/design.md §6.1).

    With ``M = (x != 0)``, ``S = boxmean_4x4(x + 1000 * (1 - M))`` (VALID,
    stride 1) and ``b = min(S)`` per image, the output is ``x - b * M``:
    masked pixels stay exactly 0 and the smallest 4x4 mean over fully
    unmasked windows becomes 0.

    Build it with ``dtype="float32"`` inside mixed-precision models: the
    subtraction of a near-equal offset loses most digits in bfloat16.

    Args:
        window: box side, pixels (default 4, docs/design.md §6.1).
        masked_offset: value added to masked pixels before filtering, in
            image units (default 1000, docs/design.md §6.1).
        **kwargs: standard layer arguments (``name``, ``dtype``).

    Input shape:
        ``(B, H, W, C)`` images, one band per channel (C = 1, or 2 for
        two-band networks, docs/design.md §5.10), image units (any linear flux
        unit), masked pixels exactly 0; ``H, W >= window``.

    Output shape:
        Same as the input, same units.
    """

    def __init__(self, window=WINDOW, masked_offset=MASKED_OFFSET, **kwargs):
        super().__init__(**kwargs)
        window = int(window)
        if window < 1:
            raise ValueError(f"BiasRemoval window must be >= 1 pixel, got {window}")
        if not masked_offset > 0:
            raise ValueError(f"BiasRemoval masked_offset must be > 0, got {masked_offset}")
        self.window = window
        self.masked_offset = float(masked_offset)

    def build(self, input_shape):
        shape = tuple(input_shape)
        if len(shape) != 4:
            raise ValueError(
                f"BiasRemoval expects images of shape (batch, H, W, bands), "
                f"got input shape {shape}")
        for side in shape[1:3]:
            if side is not None and side < self.window:
                raise ValueError(
                    f"BiasRemoval needs images of at least {self.window}x{self.window} "
                    f"pixels for its box filter, got input shape {shape}")
        super().build(input_shape)

    def call(self, inputs):
        unmasked = ops.cast(ops.not_equal(inputs, 0), inputs.dtype)
        filled = inputs + self.masked_offset * (1.0 - unmasked)
        smoothed = ops.average_pool(filled, pool_size=self.window, strides=1, padding="valid")
        bias = ops.min(smoothed, axis=(1, 2), keepdims=True)  # per image and band
        # masked pixels: 0 - b * 0 = 0 exactly (docs/design.md §6.1 step 5)
        return inputs - bias * unmasked

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"window": self.window, "masked_offset": self.masked_offset})
        return config
