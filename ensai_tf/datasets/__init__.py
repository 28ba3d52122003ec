"""TFDS datasets of ensai_tf.

``import ensai_tf.datasets.ensai_lenses`` registers the ``ensai_lenses``
builder with TFDS (it is not imported here, so ``ensai_tf.datasets`` stays
free of the TensorFlow Datasets import until it is needed).
"""

__all__ = []
