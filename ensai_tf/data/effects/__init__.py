"""The observational effects of docs/design.md §5, one module per effect or family.

Each module holds the ``sample_<effect>`` / ``apply_<effect>`` pairs of one
effect (:mod:`~ensai_tf.data.effects.base` explains the contract);
:func:`ensai_tf.data.observe.observe` chains them in the order of
docs/design.md §5.3.
"""
