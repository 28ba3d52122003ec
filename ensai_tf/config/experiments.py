"""Robustness experiments: named changes to the test-data config (docs/design.md §4, §8.5).

Example:
    >>> from ensai_tf import config
    >>> config.experiment_config(config.get_preset("smoke"), "shear").lens.shear
    True
"""

import dataclasses

from ensai_tf.config.schema import ConfigError

__all__ = ["EXPERIMENTS", "experiment_config"]

EXPERIMENTS = ("shear", "psf", "lens-light")
"""Names accepted by :func:`experiment_config` (and ``ensai evaluate --experiment``)."""


def experiment_config(cfg, experiment=None):
    """The test-data config of a robustness experiment.

    Args:
        cfg: the base :class:`~ensai_tf.config.ExperimentConfig`.
        experiment: None, ``"shear"`` (``lens.shear`` on, docs/design.md §8.5),
            ``"psf"`` (``observe.psf = "airy"``, docs/design.md §8.5) or
            ``"lens-light"`` (``simulate.lens_light`` on, docs/design.md §4 [R]).

    Returns:
        the changed :class:`~ensai_tf.config.ExperimentConfig` (``cfg`` itself
        when ``experiment`` is None).

    Raises:
        ConfigError: for an unknown experiment name, listing the valid ones.
    """
    if experiment is None:
        return cfg
    if experiment == "shear":
        return dataclasses.replace(cfg, lens=dataclasses.replace(cfg.lens, shear=True))
    if experiment == "psf":
        return dataclasses.replace(cfg, observe=dataclasses.replace(cfg.observe, psf="airy"))
    if experiment == "lens-light":
        return dataclasses.replace(cfg, simulate=dataclasses.replace(cfg.simulate, lens_light=True))
    raise ConfigError(f"unknown experiment {experiment!r}; valid: {', '.join(EXPERIMENTS)}")
