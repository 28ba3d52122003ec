"""The asinh input stretch for images that hold their lens galaxy (docs/design.md §6.1.1).

A lens galaxy 1-10 times brighter than its arcs leaves the arcs at a tenth of the
image's peak. The stretch ``asinh(x / s) / asinh(1 / s)`` is linear below the
softening ``s`` and logarithmic above it, so faint arcs and a bright galaxy core
reach the first convolution on comparable scales (Lupton et al. 1999's asinh
magnitudes). It is odd, so a zero (masked) pixel stays exactly 0, and it maps 1 to 1.
"""

import keras
from keras import ops

__all__ = ["AsinhStretch"]


@keras.saving.register_keras_serializable(package="ensai_tf")
class AsinhStretch(keras.layers.Layer):
    """Pixel-wise ``asinh(x / softening) / asinh(1 / softening)`` (docs/design.md §6.1.1).

    Args:
        softening: ``s`` > 0, in image units: below it the stretch is nearly
            linear (slope ``1 / (s asinh(1/s))``), above it logarithmic. For
            images divided by their own peak (``observe.peak_normalise``),
            ``s = 0.02`` is 2% of the peak.
        **kwargs: standard layer arguments (``name``, ``dtype``).

    Input shape:
        ``(B, H, W, C)`` images in any linear flux unit, masked pixels exactly 0.

    Output shape:
        Same as the input; 0 stays 0 and 1 stays 1.

    Example:
        >>> import numpy as np
        >>> layer = AsinhStretch(0.02)
        >>> np.round(np.asarray(layer(np.array([[0.0, 0.1, 1.0]], np.float32))), 3).tolist()
        [[0.0, 0.502, 1.0]]
    """

    def __init__(self, softening, **kwargs):
        super().__init__(**kwargs)
        if not float(softening) > 0:
            raise ValueError(f"AsinhStretch softening must be > 0, got {softening}")
        self.softening = float(softening)

    def call(self, inputs):
        s = self.softening
        return ops.arcsinh(inputs / s) / ops.arcsinh(ops.convert_to_tensor(1.0 / s, inputs.dtype))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "softening": self.softening}
