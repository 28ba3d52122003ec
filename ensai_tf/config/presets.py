"""Named presets: functions returning a whole :class:`~ensai_tf.config.ExperimentConfig`."""

import dataclasses

from ensai_tf.config.schema import ConfigError, ExperimentConfig

__all__ = [
    "PRESETS",
    "get_preset",
]


def _paper():
    """Spec values throughout, meant for a GPU (docs/design.md §7.2 [R])."""
    return ExperimentConfig()


def _smoke():
    """A few tiny steps of a tiny network: checks that an install runs end to end.

    Width 1/16 (about 0.3 M parameters for the 8-module network, against
    about 80 M at full width), so a smoke run folder (checkpoint, backup,
    ``model.keras``, SavedModel) stays under a few MB; the numbers it learns
    mean nothing.
    """
    cfg = ExperimentConfig()
    return dataclasses.replace(
        cfg,
        simulate=dataclasses.replace(cfg.simulate, oversample=1),
        data=dataclasses.replace(cfg.data, val_size=8, test_size=16, sim_batch_size=4),
        model=dataclasses.replace(cfg.model, width=0.0625),
        train=dataclasses.replace(cfg.train, batch_size=4, steps_per_epoch=2, epochs=1,
                                  plateau_patience=1),
        evaluate=dataclasses.replace(cfg.evaluate, batch_size=8, n=16),
    )


def _cpu():
    """Most accuracy per CPU-hour on a 2-core CPU.

    - mixed_bfloat16: training runs 2x faster than float32 on a CPU with
      AVX512_BF16 (13.8 vs 7.0 img/s for the 8-module net); the output layer
      stays float32. On a CPU without it (AVX2 only) bfloat16 is emulated and
      about 2x slower than float32 instead; training then warns, and
      ``--set train.mixed_precision=false`` is the faster choice.
    - lr 3e-4, 3x the GPU value of docs/design.md §7.2 [R]: a CPU budget is some 10^4
      steps, not 10^6, so a faster start matters more than the last digit;
      the plateau decay (x0.1 down to 1e-6) still applies, with patience 4
      epochs of 250 steps (1000 steps instead of 20k).
    - batch 32 instead of 50: the same images/s on 2 cores, so more updates
      per CPU-hour.
    - 300 validation lenses instead of 1000: validation is pure overhead in
      a CPU run (about 2 s every 250 steps); checkpoint selection only needs
      a ranking.
    - oversample 1 in the simulator: ray tracing is 4x cheaper, so the
      online pipeline on 2 shared cores never starves the network.
    - width 0.25: every hidden layer has a quarter of the paper's filters and
      units (about 1/16 of the FLOPs and parameters), so each network sees
      several times more lenses per CPU-hour, and the four networks plus the
      combined model fit the 150 MB limit of ``trained_weights/``.
    - 300 combiner batches (``combine_steps``): the lenses whose predictions the
      combination weights are fitted over are simulated online at the
      validation-time settings, which with the members' forward passes is the
      slow part on a CPU.
    - the combiner fitted with the log-cosh loss (docs/design.md §7.4 [R]),
      for the 68% errors this project reports.
    """
    cfg = ExperimentConfig()
    return dataclasses.replace(
        cfg,
        simulate=dataclasses.replace(cfg.simulate, oversample=1),
        data=dataclasses.replace(cfg.data, val_size=300),
        model=dataclasses.replace(cfg.model, width=0.25),
        train=dataclasses.replace(cfg.train, batch_size=32, learning_rate=3e-4,
                                  plateau_patience=4, steps_per_epoch=250, epochs=400,
                                  mixed_precision=True, combine_steps=300,
                                  combine_loss="logcosh"),
    )


PRESETS = {"paper": _paper, "smoke": _smoke, "cpu": _cpu}
"""Named presets: name -> function returning an :class:`ExperimentConfig`."""


def get_preset(name):
    """Return the preset config ``name`` (one of :data:`PRESETS`).

    Args:
        name: preset name, ``"paper"``, ``"smoke"`` or ``"cpu"``.

    Returns:
        A fresh :class:`ExperimentConfig`.

    Raises:
        ConfigError: for an unknown name, listing the valid presets.
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; valid presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]()
