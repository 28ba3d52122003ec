"""The README describes what ships: its table of the shipped networks' test errors equals the
``metrics.json`` files in ``trained_weights/``, every shipped network is in it, and its
command lines are ones the ``ensai`` parser accepts."""

import json
import pathlib
import re
import shlex

import pytest

from ensai_tf import cli, conventions

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
WEIGHTS = ROOT / "trained_weights"


def _markdown_tables(text):
    """Every Markdown table of ``text`` as a list of rows (lists of stripped cells)."""
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif current:
            tables.append(current)
            current = []
    return tables


def _weights_table():
    """The README table whose header is ``network | θ_E (″) | e_x | e_y | x (″) | y (″)``."""
    wanted = ["network", "θ_E (″)", "e_x", "e_y", "x (″)", "y (″)"]
    found = [t for t in _markdown_tables(README.read_text()) if t[0] == wanted]
    assert len(found) == 1, "README.md must hold exactly one shipped-networks table"
    return found[0][2:]  # header and separator dropped


def _shipped_names():
    return sorted(p.parent.name for p in WEIGHTS.glob("*/metrics.json"))


def test_readme_weights_table_equals_the_shipped_metrics():
    rows = {}
    for row in _weights_table():
        name = re.search(r"`([a-z0-9_]+)`", row[0])
        if name and (WEIGHTS / name.group(1) / "metrics.json").is_file():
            rows[name.group(1)] = [float(c.strip("*")) for c in row[1:]]
    assert sorted(rows) == _shipped_names()
    for name, values in rows.items():
        metrics = json.loads((WEIGHTS / name / "metrics.json").read_text())
        assert metrics["n"] == 10_000, name
        shipped = [round(metrics["metrics"][k]["error68"], 3) for k in conventions.PARAM_NAMES]
        assert values == pytest.approx(shipped, abs=1e-9), name


def _ensai_commands():
    """The ``ensai ...`` lines of the README's bash blocks, continuation lines joined."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" # ")[0].strip()
            for part in line.split("&&"):
                part = part.strip()
                if part.startswith("ensai "):
                    commands.append(part)
    return commands


def test_readme_commands_parse():
    commands = _ensai_commands()
    assert any(c.startswith("ensai demo") for c in commands)
    assert any("train.time_budget_minutes" in c for c in commands)
    for command in commands:
        cli.build_parser().parse_args(shlex.split(command)[1:])


def test_readme_quotes_bracketed_set_values_and_names_no_development_history():
    text = README.read_text()
    unquoted = re.findall(r"--set [a-z_]+\.[a-z_]+=\[", text)
    assert not unquoted, f"quote --set values with brackets for zsh: {unquoted}"
    for word in (r"\bstop \d", r"\bissue \d", r"\bsession\b"):
        assert not re.search(word, text, flags=re.I), word
