"""Atomic writes: a failed write leaves the old file, and no temporary name is left behind."""

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ensai_tf import atomic


def _entries(folder):
    return sorted(p.name for p in folder.iterdir())


def test_write_text_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("old")
    assert atomic.write_text(path, "new") == path
    assert path.read_text() == "new"
    assert _entries(tmp_path) == ["metrics.json"]


def test_write_text_that_fails_keeps_the_old_file(tmp_path):
    path = tmp_path / "table1.md"
    path.write_text("old")
    with pytest.raises(TypeError):
        atomic.write_text(path, None)  # not text: fails inside the write
    assert path.read_text() == "old"
    assert _entries(tmp_path) == ["table1.md"]


def test_temp_path_is_a_hidden_sibling_with_the_suffix(tmp_path):
    tmp = atomic.temp_path(tmp_path / "best.keras", ".keras")
    assert tmp.parent == tmp_path
    assert tmp.name.startswith(atomic.TMP_PREFIX) and tmp.name.endswith("-best.keras.keras")
    assert atomic.temp_path(tmp_path / "a") != atomic.temp_path(tmp_path / "a")


def test_save_figure_keeps_format_and_old_file_on_failure(tmp_path):
    fig = Figure(figsize=(1, 1))
    FigureCanvasAgg(fig)
    fig.subplots().plot([0, 1], [0, 1])
    path = tmp_path / "figure1.png"
    atomic.save_figure(fig, path, dpi=20)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    before = path.read_bytes()
    with pytest.raises(ValueError):
        atomic.save_figure(fig, path, dpi=20, format="no-such-format")
    assert path.read_bytes() == before
    assert _entries(tmp_path) == ["figure1.png"]


def test_replace_folder_swaps_whole_folders(tmp_path):
    final = tmp_path / "eval"
    final.mkdir()
    (final / "old.txt").write_text("old")
    new = atomic.temp_path(final)
    new.mkdir()
    (new / "metrics.json").write_text("{}")
    assert atomic.replace_folder(new, final) == final
    assert _entries(final) == ["metrics.json"]
    assert _entries(tmp_path) == ["eval"]
