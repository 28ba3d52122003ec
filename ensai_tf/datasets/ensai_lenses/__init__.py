"""The ``ensai_lenses`` TFDS dataset; importing this package registers it.

>>> import ensai_tf.datasets.ensai_lenses  # registers "ensai_lenses"
>>> builder = tfds.builder("ensai_lenses/observed_small", data_dir=...)
"""

from ensai_tf.datasets.ensai_lenses.ensai_lenses_dataset_builder import (
    CONFIG_SIZES,
    Builder,
    EnsaiLensesConfig,
    examples_in_range,
    make_config,
)

__all__ = ["Builder", "EnsaiLensesConfig", "make_config", "CONFIG_SIZES", "examples_in_range"]
