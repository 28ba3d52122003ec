"""What the quality flags tell a user: one line of advice per flag (docs/design.md §8.7).

:mod:`ensai_tf.flags` decides which flags an image raises; this module words
them: the ``flags`` cell of a table row (:func:`format_flags`) and the warning
line ``ensai predict`` prints for each flagged file (:func:`warning_lines`).

Example:
    >>> format_flags(["no_lens", "small_field"])
    'no_lens;small_field'
"""

from ensai_tf.flags import FLAG_NAMES

__all__ = [
    "FLAG_ADVICE",
    "format_flags",
    "warning_lines",
]

FLAG_ADVICE = {
    "no_lens": "no lensed arcs found (blank sky, noise or a single galaxy); the parameters are "
               "meaningless",
    "lens_light": "a bright smooth light at the lens centre, which the networks never saw; "
                  "subtract a fitted lens light (--subtract-lens-light always) or give a "
                  "second band with --bands",
    "small_field": "the image covers less than the 7.68 arcsec field or the arcs touch its "
                   "edge; give a larger cutout centred on the lens",
    "out_of_distribution": "the predicted lens does not focus the arcs back onto a compact "
                           "source; the image is unlike the training data, treat the numbers "
                           "with caution",
}
"""One line per flag: why it was raised and what to do."""


def format_flags(names):
    """A row's ``flags`` cell in CSV: names joined by semicolons, empty when none."""
    return ";".join(names)


def warning_lines(flagged):
    """One warning line per flagged file: the flags, how many images raised them, what to do.

    Args:
        flagged: dict file -> dict flag name -> number of images of that file
            that raised it.

    Returns:
        list of strings, one per file, in the order given.
    """
    lines = []
    for file, counts in flagged.items():
        names = [name for name in FLAG_NAMES if counts.get(name)]
        reasons = "; ".join(f"{name} ({counts[name]} image{'s' * (counts[name] > 1)}): "
                            f"{FLAG_ADVICE[name]}" for name in names)
        lines.append(f"ensai predict: warning: {file}: {reasons}")
    return lines
