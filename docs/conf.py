"""Sphinx configuration of the ensai_tf API reference.

Build (warnings are errors)::

    pip install -e ".[docs]"
    python -m sphinx -W -b html docs docs/_build/html

The package must be importable (it is installed by the command above):
autodoc imports every module, TensorFlow included, so the reference is built
from the code that actually runs. Docstrings are Google style
and are read by napoleon.
"""

import ensai_tf

project = "ensai_tf"
author = "ensai_tf developers"
copyright = "2026, ensai_tf developers; after Hezaveh, Perreault Levasseur & Marshall 2017"
version = release = ensai_tf.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
language = "en"


# -- autodoc ---------------------------------------------------------------
# Members are those of each module's __all__ (the public API); the order is
# the source order, which follows the data flow within a module.
autodoc_default_options = {
    "members": True,
    "member-order": "bysource",
    "show-inheritance": True,
}
autodoc_typehints = "none"  # the units and shapes are in the docstrings, not in hints
autodoc_class_signature = "mixed"
autodoc_preserve_defaults = True  # show `conventions.NPIX`, not 192, in signatures
autoclass_content = "class"

# -- napoleon (Google style) -----------------------------------------------
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_include_init_with_doc = False
napoleon_use_param = True
napoleon_use_rtype = False
napoleon_use_ivar = True  # dataclass "Attributes:" sections as :ivar:, never duplicate targets
napoleon_attr_annotations = False

# -- MyST (docs/*.md) ------------------------------------------------------
myst_heading_anchors = 3

# -- HTML --------------------------------------------------------------------
html_theme = "alabaster"
html_title = f"ensai_tf {release}"
html_static_path = []
html_theme_options = {
    "description": "Strong-lens parameters with CNNs (Hezaveh et al. 2017) in TF/Keras 3",
    "fixed_sidebar": True,
}


# -- local hooks -------------------------------------------------------------


def _format_default(value):
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, tuple):
        inner = ", ".join(_format_default(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    return repr(value)


def _bounds(meta):
    parts = []
    if meta.get("lo") is not None:
        parts.append((">" if meta.get("lo_open") else ">=") + f" {meta['lo']}")
    if meta.get("hi") is not None:
        parts.append(("<" if meta.get("hi_open") else "<=") + f" {meta['hi']}")
    if meta.get("choices"):
        parts.append("one of " + ", ".join(repr(c) for c in meta["choices"]))
    if meta.get("integer"):
        parts.append("integers")
    return "; ".join(parts)


def _config_fields(app, what, name, obj, options, lines):
    """Append a table of a config dataclass's fields (default, bounds, meaning).

    The meanings, with their units, are the ``doc=`` strings that
    :mod:`ensai_tf.config` stores in each field's metadata and validates
    against, so the reference cannot drift from the checks.
    """
    import dataclasses

    if what != "class" or not name.startswith("ensai_tf.config.") or \
            not dataclasses.is_dataclass(obj):
        return
    rows = []
    for field in dataclasses.fields(obj):
        if field.default is not dataclasses.MISSING:
            default = f"``{_format_default(field.default)}``"
        elif field.default_factory is not dataclasses.MISSING:
            made = field.default_factory()
            default = (f":class:`{type(made).__name__}` defaults"
                       if dataclasses.is_dataclass(made) else f"``{_format_default(made)}``")
        else:
            default = "(required)"
        meaning = field.metadata.get("doc") or (
            f"the ``{field.name}`` section" if default.startswith(":class:") else "")
        bounds = _bounds(field.metadata)
        rows.append((f"``{field.name}``", default, bounds or "", meaning))
    if not rows:
        return
    lines.extend(["", ".. list-table:: Fields (``--set SECTION.FIELD=VALUE``)",
                  "   :header-rows: 1", "   :widths: 20 20 15 45", "",
                  "   * - field", "     - default", "     - allowed", "     - meaning"])
    for row in rows:
        lines.append(f"   * - {row[0]}")
        lines.extend(f"     - {cell}" for cell in row[1:])
    lines.append("")


def _skip_napoleon_for_data(app):
    """Keep napoleon off module- and class-level data docstrings.

    Napoleon reads the first ``word: text`` of an attribute docstring as its
    type (``"Named presets: name -> ..."`` became a "Type:" field); the
    package's data docstrings are plain prose, so they are left as written.
    """
    from sphinx.ext import napoleon

    listeners = app.events.listeners.get("autodoc-process-docstring", [])
    for listener in list(listeners):
        if listener.handler is napoleon._process_docstring:
            app.disconnect(listener.id)

    def process(app, what, name, obj, options, lines):
        if what in ("data", "attribute"):
            return
        napoleon._process_docstring(app, what, name, obj, options, lines)

    app.connect("autodoc-process-docstring", process)


def setup(app):
    _skip_napoleon_for_data(app)
    app.connect("autodoc-process-docstring", _config_fields)
    return {"parallel_read_safe": True}
