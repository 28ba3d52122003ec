"""The package's shape: layers with one direction, no import cycle, modules a reader can hold.

The layer order (docs/design.md §11), lowest first; a module may import its
own layer and the layers below it, never one above:

0. errors, atomic, conventions, dirlock, model_dir, quiet, checkpoint
1. config
2. lensing, plotting
3. data, datasets
4. preprocess, losses, metrics, symmetry, calibration, uncertainty, tables
5. models
6. inference, export, callbacks, run_dir
7. workflows: train, combine, calibrate, evaluate, reports, prediction,
   catalog, realdata, twoband, lens_light_report, demo
8. cli

The package ``__init__`` sits above them all: it imports the modules that
register custom Keras objects, so plain ``keras.saving.load_model`` reads any
``.keras`` file the package writes.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "ensai_tf"
REPO = PACKAGE.parent

LAYERS = (
    ("errors", "atomic", "conventions", "dirlock", "model_dir", "quiet", "checkpoint"),
    ("config",),
    ("lensing", "plotting"),
    ("data", "datasets"),
    ("preprocess", "losses", "metrics", "symmetry", "calibration", "uncertainty", "tables"),
    ("models",),
    ("inference", "export", "callbacks", "run_dir", "flags", "flag_messages", "screen",
     "distribute"),
    ("train", "combine", "calibrate", "evaluate", "reports", "prediction", "catalog",
     "catalog_rows", "realdata", "twoband", "lens_light_report", "lens_light_paths",
     "lens_light_tables", "demo", "trust", "train_screen"),
    ("cli",),
)
"""Top-level names of ``ensai_tf``'s modules and subpackages, by layer, lowest first."""

LAZY_IMPORTS_ALLOWED = ("ensai_tf", "ensai_tf.cli")
"""Modules whose functions may import package modules (to keep ``ensai --help`` fast)."""

MAX_LINES = 600


def module_name(path):
    """Dotted module name of a file under the package."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def package_modules():
    """``{dotted name: path}`` of every module of the package."""
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _targets(module, node, is_package, modules):
    """The package modules an import statement names (the longest existing prefix)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:
            base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
            base = ".".join(base + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                 for alias in node.names]
    found = []
    for name in names:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name:
            found.append(name)
    return found


def import_graph(modules):
    """``({module: set of imported package modules}, [(module, line, target) inside functions])``."""
    graph, nested = {}, []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = {id(node) for node in tree.body}
        edges = set()
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target in _targets(module, node, path.name == "__init__.py", modules):
                if target == module or module.startswith(target + "."):
                    continue  # a package's own __init__, imported implicitly anyway
                edges.add(target)
                if id(node) not in top:
                    nested.append((module, node.lineno, target))
        graph[module] = edges
    return graph, nested


def find_cycles(graph):
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def layer_of(module):
    """Layer index of a package module; the package ``__init__`` is above every layer."""
    if module == "ensai_tf":
        return len(LAYERS)
    top = module.split(".")[1]
    for rank, names in enumerate(LAYERS):
        if top in names:
            return rank
    raise KeyError(f"{module} is in no layer; add it to LAYERS in tests/test_layering.py "
                   "and to docs/design.md §11")


def upward_imports(graph):
    """``(module, target)`` pairs where a module imports a higher layer."""
    return sorted((m, t) for m, targets in graph.items() for t in targets
                  if layer_of(t) > layer_of(m))


@pytest.fixture(scope="module")
def graph():
    return import_graph(package_modules())


def test_every_module_has_a_layer():
    for module in package_modules():
        layer_of(module)


def test_no_import_cycle(graph):
    assert find_cycles(graph[0]) == []


def test_no_upward_import(graph):
    assert upward_imports(graph[0]) == []


def test_imports_inside_functions_only_where_they_keep_start_up_fast(graph):
    assert [n for n in graph[1] if n[0] not in LAZY_IMPORTS_ALLOWED] == []


def test_the_checks_catch_a_planted_cycle_and_an_upward_import():
    planted = {"ensai_tf.config": {"ensai_tf.train"}, "ensai_tf.train": {"ensai_tf.config"},
               "ensai_tf.models": {"ensai_tf.losses"}}
    assert find_cycles(planted) == [["ensai_tf.config", "ensai_tf.train"]]
    assert upward_imports(planted) == [("ensai_tf.config", "ensai_tf.train")]


def test_the_graph_sees_imports_inside_functions(tmp_path):
    pkg = tmp_path / "ensai_tf"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "config.py").write_text("def f():\n    from ensai_tf import train\n")
    (pkg / "train.py").write_text("from ensai_tf import config\n")
    modules = {"ensai_tf": pkg / "__init__.py", "ensai_tf.config": pkg / "config.py",
               "ensai_tf.train": pkg / "train.py"}
    edges, nested = import_graph(modules)
    assert find_cycles(edges) == [["ensai_tf.config", "ensai_tf.train"]]
    assert nested == [("ensai_tf.config", 2, "ensai_tf.train")]


def test_modules_a_reader_can_hold():
    long = {m: n for m, p in package_modules().items()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}


def _private_uses(path, modules):
    """``module._name`` and ``from module import _name`` uses of package modules in one file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    aliases, uses = {}, []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ensai_tf"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if full in modules:
                    aliases[alias.asname or alias.name] = full
                elif alias.name.startswith("_") and not alias.name.startswith("__"):
                    uses.append(f"{path.name}:{node.lineno} {full}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules and alias.asname:
                    aliases[alias.asname] = alias.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id in aliases and node.attr.startswith("_") \
                and not node.attr.startswith("__"):
            uses.append(f"{path.name}:{node.lineno} {aliases[node.value.id]}.{node.attr}")
    return uses


def test_no_private_name_used_outside_its_module():
    modules = package_modules()
    files = [*PACKAGE.rglob("*.py"), *(REPO / "tests").rglob("*.py"), *(REPO / "tools").rglob("*.py")]
    uses = [u for f in sorted(files) for u in _private_uses(f, modules)]
    assert uses == []
