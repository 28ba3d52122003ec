"""The API reference builds without a single warning.

``python -m sphinx -W -b html docs OUT`` is run into pytest's tmp_path, so the
test never writes into the checkout. The build imports every module (autodoc),
so it also fails when a docstring cannot be parsed, a page is missing from a
toctree or ``docs/reproducing_the_paper.md`` has a broken heading.

Two cheap checks run without Sphinx: every module of the package has a page
(an ``automodule`` directive under ``docs/api/``), and every public function
and class (``__all__``) has a docstring.
"""

import importlib
import importlib.util
import inspect
import pathlib
import pkgutil
import re
import subprocess
import sys

import pytest

import ensai_tf

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
BUILD_TIMEOUT_S = 900  # about 15-30 s on a 2-core CPU, most of it importing TensorFlow


def _package_modules():
    names = ["ensai_tf"]
    for info in pkgutil.walk_packages(ensai_tf.__path__, prefix="ensai_tf."):
        if info.name.rsplit(".", 1)[-1] != "__main__":
            names.append(info.name)
    return sorted(names)


def _documented_modules():
    pattern = re.compile(r"^\.\. automodule::\s+(\S+)", re.MULTILINE)
    return {m for page in DOCS.glob("api/*.rst") for m in pattern.findall(page.read_text())}


def test_every_module_has_a_reference_page():
    missing = sorted(set(_package_modules()) - _documented_modules())
    assert not missing, f"modules without an automodule directive under docs/api/: {missing}"


def test_documented_modules_exist():
    unknown = sorted(m for m in _documented_modules() if importlib.util.find_spec(m) is None)
    assert not unknown, f"docs/api/ names modules that do not exist: {unknown}"


def test_every_public_function_and_class_has_a_docstring():
    undocumented = []
    for name in _package_modules():
        module = importlib.import_module(name)
        for attr in getattr(module, "__all__", ()):
            obj = getattr(module, attr)
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and not inspect.getdoc(obj):
                undocumented.append(f"{name}.{attr}")
    assert not undocumented, f"public names without a docstring: {undocumented}"


def test_sphinx_build_has_no_warnings(tmp_path):
    pytest.importorskip("sphinx", reason="sphinx is not installed (pip install -e '.[docs]')")
    pytest.importorskip("myst_parser",
                        reason="myst-parser is not installed (pip install -e '.[docs]')")
    out = tmp_path / "html"
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
           "-d", str(tmp_path / "doctrees"), str(DOCS), str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          timeout=BUILD_TIMEOUT_S)
    # TensorFlow's C++ start-up lines also go to stderr; Sphinx's own lines name a file
    warnings = [line for line in proc.stderr.splitlines()
                if "WARNING" in line and ("docs/" in line or "ensai_tf" in line)
                or "ERROR" in line]
    assert proc.returncode == 0, (f"sphinx -W failed (exit {proc.returncode}):\n"
                                  + "\n".join(warnings or proc.stderr.splitlines()[-40:]))
    for page in ("index.html", "quickstart.html", "reproducing_the_paper.html",
                 "api/index.html", "api/prediction.html", "api/realdata.html", "py-modindex.html"):
        assert (out / page).is_file(), f"the build did not write {page}"
    html = (out / "api" / "prediction.html").read_text()
    assert "load_predictor" in html and "arcsec" in html
    assert "Table 1" in (out / "reproducing_the_paper.html").read_text()
