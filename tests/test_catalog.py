"""``ensai predict MODEL --catalog``: shards, resume after a kill, bad input, positions, bands.

The model is the constant one of conftest (its parameters do not depend on the image), so
what differs between rows is the preparation: the lens centre in file pixels (``x_pix``,
``y_pix``), sky positions, position angles and quality flags, which all depend on where
and how each image was cut. Where a test needs to see the pixels, it compares the
network inputs themselves (:func:`ensai_tf.catalog.prepare_entry`).
"""

import csv
import json
import re
import weakref

import numpy as np
import pytest

from ensai_tf import catalog, cli, realdata
from ensai_tf.errors import InputError
from ensai_tf.prediction import load_table_predictor
from ensai_tf.preprocess.images import iter_prepared
from ensai_tf.tables import AppendTable


@pytest.fixture
def model(tmp_path, constant_model):
    return constant_model(tmp_path / "m.keras")


def _survey(folder, arc_image, n=7):
    """``n`` .npy cutouts of several sizes under ``folder/img`` and a catalogue of them
    (relative paths; some rows with x/y); returns the catalogue path."""
    (folder / "img").mkdir(parents=True)
    lines = ["path,x,y"]
    for i in range(n):
        side = (192, 200, 180)[i % 3]
        image = arc_image(side) * (1.0 + 0.1 * i)
        np.save(folder / "img" / f"l{i}.npy", image)
        position = f"{side / 2 - 1 + 0.5 * (i % 2)},{side / 2 - 0.5}" if i % 3 == 1 else ","
        lines.append(f"img/l{i}.npy,{position}")
    (folder / "cutouts.csv").write_text("\n".join(lines) + "\n")
    return folder / "cutouts.csv"


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _run(capsys, *args):
    code = cli.main(list(map(str, args)))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_shards_are_disjoint_and_together_equal_the_unsharded_table(tmp_path, model, arc_image,
                                                                    monkeypatch, capsys):
    cat = _survey(tmp_path / "survey", arc_image)
    monkeypatch.chdir(tmp_path)  # paths resolve against the catalogue's folder, not the cwd
    full = catalog.predict_catalog(model, cat, tmp_path / "all.csv", batch_size=3)
    assert (full.written, full.failed, full.total) == (7, 0, 7)
    catalog.predict_catalog(model, cat, tmp_path / "s0.csv", shard=(0, 2), batch_size=3)
    code, _, err = _run(capsys, "predict", model, "--catalog", cat, "--shard", "1/2",
                        "--out", tmp_path / "s1.csv", "--batch-size", "3")
    assert code == 0 and "3 lenses written" in err and "shard 1/2 of 3 rows" in err
    everything, s0, s1 = (_rows(tmp_path / f"{n}.csv") for n in ("all", "s0", "s1"))
    assert [r["catalog_row"] for r in everything] == [str(i) for i in range(7)]
    assert [r["file"] for r in everything] == [f"img/l{i}.npy" for i in range(7)]
    assert [r["catalog_row"] for r in s0] == ["0", "2", "4", "6"]
    assert [r["catalog_row"] for r in s1] == ["1", "3", "5"]
    assert sorted(s0 + s1, key=lambda r: int(r["catalog_row"])) == everything
    # the rows differ where their cutting differs: x/y rows sit where the catalogue says
    assert len({r["x_pix"] for r in everything}) > 2
    assert not (tmp_path / "all.csv.errors.csv").exists()


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_resume_after_a_kill_completes_without_repeats_or_losses(tmp_path, model, arc_image,
                                                                 capsys, suffix):
    cat = _survey(tmp_path, arc_image)
    full = tmp_path / f"full.{suffix}"
    catalog.predict_catalog(model, cat, full, batch_size=2)
    lines = full.read_text().splitlines(keepends=True)
    head = 1 if suffix == "csv" else 0
    # a killed run: three complete rows, then half of the fourth (no newline)
    out = tmp_path / f"out.{suffix}"
    out.write_text("".join(lines[:head + 3]) + lines[head + 3][:25])
    capsys.readouterr()
    summary = catalog.predict_catalog(model, cat, out, resume=True, batch_size=2)
    assert "dropped an incomplete last line (25 bytes)" in capsys.readouterr().err
    assert (summary.skipped, summary.written) == (3, 4)
    assert out.read_text() == full.read_text()
    # resuming a complete table adds nothing
    again = catalog.predict_catalog(model, cat, out, resume=True)
    assert (again.skipped, again.written) == (7, 0)
    assert out.read_text() == full.read_text()


def test_resume_after_an_interrupt_midway(tmp_path, model, arc_image, capsys):
    """A run stopped after its second batch keeps those rows; --resume finishes the table."""
    cat = _survey(tmp_path, arc_image)
    catalog.predict_catalog(model, cat, tmp_path / "full.csv", batch_size=2)

    def stop(done, total):
        if done >= 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        catalog.predict_catalog(model, cat, tmp_path / "out.csv", batch_size=2, progress=stop)
    assert [r["catalog_row"] for r in _rows(tmp_path / "out.csv")] == ["0", "1", "2", "3"]
    code, _, err = _run(capsys, "predict", model, "--catalog", cat, "--output",
                        tmp_path / "out.csv", "--resume", "--batch-size", "2")
    assert code == 0 and "3 lenses written" in err and "4 already there" in err
    assert (tmp_path / "out.csv").read_text() == (tmp_path / "full.csv").read_text()


def test_resume_refuses_another_shard_catalogue_or_table(tmp_path, model, arc_image):
    cat = _survey(tmp_path, arc_image)
    out = tmp_path / "s0.csv"
    catalog.predict_catalog(model, cat, out, shard="0/2")
    before = out.read_text()
    with pytest.raises(InputError, match=r"s0.csv line 2: catalog_row 0 belongs to another "
                                         r"shard than 1/2"):
        catalog.predict_catalog(model, cat, out, shard="1/2", resume=True)
    other = tmp_path / "other.csv"
    other.write_text(cat.read_text().replace("img/l2.npy", "img/l0.npy"))
    with pytest.raises(InputError, match=r"catalog_row 2 \('img/l2.npy'\) is not that row"):
        catalog.predict_catalog(model, other, out, shard="0/2", resume=True)
    plain = tmp_path / "plain.csv"
    plain.write_text("file,index,theta_e\na.npy,0,1.2\n")
    with pytest.raises(InputError, match="not those of this table"):
        catalog.predict_catalog(model, cat, plain, resume=True)
    assert out.read_text() == before and plain.read_text() == "file,index,theta_e\na.npy,0,1.2\n"


@pytest.mark.parametrize("text, args, message", [
    (None, (), r"catalogue '.*missing.csv': no such file"),
    ("x,y\n1,2\n", (), r"cat.csv line 1: no 'path' column"),
    ("path,colour\na.npy,red\n", (), r"cat.csv line 1: unknown column 'colour'"),
    ("path,ra\na.npy,10\n", (), r"column 'ra' needs its partner 'dec'"),
    ("path,x,y\na.npy,1,2\nb.npy,3,abc\n", (), r"cat.csv line 3: y 'abc' is not a number"),
    ("path,ra,dec\na.npy,400,2\n", (), r"cat.csv line 2: ra '400' is out of range"),
    ("path,x,y\na.npy,1,\n", (), r"cat.csv line 2: x and y are given together or not at all"),
    ("path,x,y,ra,dec\na.npy,1,2,3,4\n", (), r"line 2: give the lens position as ra/dec or "),
    ("path,x\n", (), r"column 'x' needs its partner 'y'"),
    ("path,x,y\n\n,1,2\n", (), r"cat.csv line 3: empty path"),
    ("path\na.npy,b.npy\n", (), r"cat.csv line 2: 2 cells where the header has 1"),
    ("path\na.npy\n", ("--shard", "2/2"), r"shard '2/2' must be I/N with 0 <= I < N"),
    ("path\na.npy\n", ("--shard", "one/two"), r"shard 'one/two' must be I/N"),
    ("path\na.npy\n", ("--output", "out.json"), r"a .json table is one JSON array, which "
                                                 r"cannot be written as it goes"),
    ("path\na.npy\n", ("--output", "exists.csv"), r"'.*exists.csv' already exists; pass "
                                                   r"--resume to continue it"),
    ("path\na.npy\n", ("--resume", "--overwrite", "--output", "o.csv"), r"not both"),
    ("path\na.npy\n", ("--resume",), r"--resume needs an output file"),
    ("path\na.npy\n", ("--x", "3", "--y", "4"), r"--catalog takes .* drop --x, --y"),
])
def test_bad_input_is_one_line_naming_it(tmp_path, capsys, monkeypatch, text, args, message):
    """Each bad catalogue or option stops the run before the model loads (the model
    here does not exist), with one line on stderr."""
    monkeypatch.chdir(tmp_path)
    cat = tmp_path / ("missing.csv" if text is None else "cat.csv")
    if text is not None:
        cat.write_text(text)
    (tmp_path / "exists.csv").write_text("keep\n")
    code, out, err = _run(capsys, "predict", tmp_path / "no_model", "--catalog", cat, *args)
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1, err
    assert err.startswith("ensai predict: error: ")
    assert re.search(message, err), err
    assert (tmp_path / "exists.csv").read_text() == "keep\n"


def test_resume_without_catalog_is_refused(tmp_path, capsys):
    code, _, err = _run(capsys, "predict", tmp_path / "m", tmp_path / "a.npy", "--resume")
    assert code == 2 and err.strip() == ("ensai predict: error: --resume and --shard work with "
                                         "--catalog FILE.csv")


def test_unusable_images_are_reported_written_down_and_skipped(tmp_path, model, arc_image,
                                                               capsys):
    np.save(tmp_path / "good.npy", arc_image())
    bad = arc_image()
    bad[5, 5] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    np.save(tmp_path / "stack.npy", np.stack([arc_image()] * 2))
    (tmp_path / "cat.csv").write_text("path,x,y\ngood.npy,,\nmissing.npy,,\nnan.npy,,\n"
                                      "good.npy,5000,10\nstack.npy,,\n/abs/none.fits,,\n"
                                      "good.npy,95.5,95.5\n")
    code, _, err = _run(capsys, "predict", model, "--catalog", tmp_path / "cat.csv",
                        "--output", tmp_path / "out.csv")
    assert code == 0
    lines = [line for line in err.splitlines() if line.endswith("(skipped)")]
    assert len(lines) == 5
    for line, k in zip(lines, (3, 4, 5, 6, 7)):
        assert line.startswith(f"ensai predict: {tmp_path / 'cat.csv'} line {k}: ")
    assert "missing.npy: no such file" in lines[0] and "NaN" in lines[1]
    assert "outside the image (192 x 192 pixels)" in lines[2] and "holds 2 images" in lines[3]
    assert "2 lenses written" in err and "5 failed (listed in" in err
    assert [r["catalog_row"] for r in _rows(tmp_path / "out.csv")] == ["0", "6"]
    errors = _rows(tmp_path / "out.csv.errors.csv")
    assert [(r["catalog_row"], r["line"], r["path"]) for r in errors] == [
        ("1", "3", "missing.npy"), ("2", "4", "nan.npy"), ("3", "5", "good.npy"),
        ("4", "6", "stack.npy"), ("5", "7", "/abs/none.fits")]
    # the images are fixed: a resumed run predicts them and the old errors file goes
    np.save(tmp_path / "missing.npy", arc_image())
    (tmp_path / "cat.csv").write_text((tmp_path / "cat.csv").read_text().replace(
        "good.npy,5000,10", "good.npy,50,10"))
    summary = catalog.predict_catalog(model, tmp_path / "cat.csv", tmp_path / "out.csv",
                                      resume=True)
    assert (summary.skipped, summary.written, summary.failed) == (2, 2, 3)
    assert [r["catalog_row"] for r in _rows(tmp_path / "out.csv.errors.csv")] == ["2", "4", "5"]
    # nothing usable at all is an error
    (tmp_path / "none.csv").write_text("path\nmissing2.npy\n")
    code, _, err = _run(capsys, "predict", model, "--catalog", tmp_path / "none.csv",
                        "--output", tmp_path / "none_out.csv")
    assert code == 2 and err.splitlines()[-1].startswith(
        "ensai predict: error: no lens could be predicted: all 1 failed; see ")


def test_xy_and_radec_cut_the_field_the_single_file_path_sees(tmp_path, model, arc_image,
                                                              celestial_wcs, write_fits):
    """A lens at (x, y) of a large FITS tile gives, to the bit, the network input that
    ``ensai predict`` makes of a 192-pixel file cut around it, and the same row shifted
    by the cut's offset; ra/dec of the same point give the same input."""
    tile = np.random.default_rng(1).normal(0.02, 0.004, (300, 400)).astype(np.float32)
    c0, r0 = 130, 70  # the cut's corner: its centre is file pixel (225.5, 165.5)
    tile[r0:r0 + 192, c0:c0 + 192] = arc_image()
    wcs = celestial_wcs(0.04, 300, rotation_deg=20.0)
    write_fits(tmp_path / "tile.fits", tile, wcs)
    np.save(tmp_path / "cut.npy", tile[r0:r0 + 192, c0:c0 + 192])
    sky = wcs.pixel_to_world(225.5, 165.5)
    ra, dec = float(sky.ra.deg), float(sky.dec.deg)
    (tmp_path / "cat.csv").write_text(
        f"path,x,y,ra,dec\ntile.fits,225.5,165.5,,\ntile.fits,,,{ra!r},{dec!r}\n"
        "cut.npy,,,,\ntile.fits,20,280,,\n")
    entries = list(catalog.iter_catalog(tmp_path / "cat.csv"))
    (reference,) = iter_prepared(str(tmp_path / "cut.npy"))
    for entry in entries[:3]:
        item, cutout = catalog.prepare_entry(entry)
        assert cutout is None and np.array_equal(item.image, reference.image)
    catalog.predict_catalog(model, tmp_path / "cat.csv", tmp_path / "out.csv")
    xy, radec, cut, corner = _rows(tmp_path / "out.csv")
    assert float(xy["x_pix"]) == pytest.approx(float(cut["x_pix"]) + c0, abs=1e-9)
    assert float(xy["y_pix"]) == pytest.approx(float(cut["y_pix"]) + r0, abs=1e-9)
    assert (radec["x_pix"], radec["y_pix"]) == (xy["x_pix"], xy["y_pix"])
    assert xy["theta_e"] == cut["theta_e"] and xy["pa_frame"] == "east_of_north"
    assert cut["pa_frame"] == "image_x_towards_y"
    # the lens centre maps to the sky through the tile's WCS
    lens = wcs.pixel_to_world(float(xy["x_pix"]), float(xy["y_pix"]))
    assert float(xy["ra_deg"]) == pytest.approx(lens.ra.deg, abs=1e-9)
    # a lens near the corner: the field hangs over the edge, masked, and is flagged
    (item, _) = catalog.prepare_entry(entries[3])
    # window corner: column round(20 - 95.5) = -76, row round(280 - 95.5) = 184
    assert item.footprint == (0, 300 - 184, 76, 192)
    assert "small_field" in corner["flags"]


def test_band2_rows_take_the_two_band_path(tmp_path, model, arc_image, celestial_wcs,
                                           write_fits):
    """A row with band2 gives the row of ``ensai predict --bands`` for the same files."""
    arcs = arc_image(220) - 0.01
    y, x = np.mgrid[0:220, 0:220] - 109.5
    lens = np.exp(-np.hypot(x, y) / 8.0)
    rng = np.random.default_rng(0)
    wcs = celestial_wcs(0.04, 220, rotation_deg=10.0)
    blue = write_fits(tmp_path / "b.fits", arcs + 0.9 * lens + 0.004 * rng.standard_normal(
        arcs.shape) + 0.05, wcs)
    red = write_fits(tmp_path / "r.fits", arcs / 1.2 + 3.0 * lens + 0.004 * rng.standard_normal(
        arcs.shape) + 0.05, wcs)
    (tmp_path / "cat.csv").write_text("path,band2,x,y\nb.fits,r.fits,109.5,109.5\n")
    catalog.predict_catalog(model, tmp_path / "cat.csv", tmp_path / "out.jsonl",
                            psf_fwhm=(0.07, 0.07))
    (row,) = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    (expected,) = realdata.predict_two_band(model, blue, red, output=str(tmp_path / "b.json"),
                                            x=109.5, y=109.5, psf_fwhm=(0.07, 0.07))
    assert row["file"] == "b.fits" and row["catalog_row"] == 0
    for key, value in expected.items():
        if key != "file":
            assert row[key] == value, key


def test_memory_holds_one_batch_of_images(tmp_path, model, arc_image, monkeypatch):
    """25 rows, batch 4: never more than 4 prepared images alive."""
    alive = [0]
    real = catalog.prepare_lens_file

    def tracked(*args, **kwargs):
        item = real(*args, **kwargs)
        alive[0] += 1
        weakref.finalize(item, lambda: alive.__setitem__(0, alive[0] - 1))
        return item

    monkeypatch.setattr(catalog, "prepare_lens_file", tracked)
    np.save(tmp_path / "a.npy", arc_image())
    (tmp_path / "cat.csv").write_text("path\n" + "a.npy\n" * 25)
    peaks = []
    summary = catalog.predict_catalog(model, tmp_path / "cat.csv", tmp_path / "o.csv",
                                      batch_size=4, progress=lambda d, t: peaks.append(alive[0]))
    assert summary.written == 25 and max(peaks) <= 4


def test_a_second_writer_of_the_same_output_is_refused(tmp_path, model, arc_image):
    np.save(tmp_path / "a.npy", arc_image())
    (tmp_path / "cat.csv").write_text("path\na.npy\n")
    columns = (catalog.ROW_COLUMN, *load_table_predictor(model).columns)
    holder = AppendTable(str(tmp_path / "o.csv"), columns)
    try:
        with pytest.raises(InputError, match="is being written by another run"):
            catalog.predict_catalog(model, tmp_path / "cat.csv", tmp_path / "o.csv", resume=True)
    finally:
        holder.close()
    assert catalog.predict_catalog(model, tmp_path / "cat.csv", tmp_path / "o.csv",
                                   resume=True).written == 1


def test_every_forward_pass_has_the_batch_size(tmp_path, model, arc_image, monkeypatch):
    """A shard's last, short batch is padded to the batch size (the catalogue's length when
    shorter), so a lens meets the same kernels whichever shard or run predicts it."""
    sizes = []
    real = catalog.load_table_predictor

    def recording(*args, **kwargs):
        predictor = real(*args, **kwargs)
        network = predictor.predict_fn
        predictor.predict_fn = lambda images: sizes.append(len(images)) or network(images)
        return predictor

    monkeypatch.setattr(catalog, "load_table_predictor", recording)
    cat = _survey(tmp_path, arc_image)
    catalog.predict_catalog(model, cat, tmp_path / "a.csv", shard=(1, 2), batch_size=2)
    assert sizes == [2, 2] and len(_rows(tmp_path / "a.csv")) == 3
    sizes.clear()
    catalog.predict_catalog(model, cat, tmp_path / "b.csv", shard=(0, 2), batch_size=100)
    assert sizes == [7] and len(_rows(tmp_path / "b.csv")) == 4


def test_the_table_streams_to_stdout(tmp_path, model, arc_image, capsys):
    np.save(tmp_path / "a.npy", arc_image())
    (tmp_path / "cat.csv").write_text("\npath\na.npy\n\na.npy\n")  # blank lines are not rows
    code, out, err = _run(capsys, "predict", model, "--catalog", tmp_path / "cat.csv")
    assert code == 0 and "2 lenses written to -" in err
    rows = list(csv.DictReader(out.splitlines()))
    assert [(r["catalog_row"], r["file"]) for r in rows] == [("0", "a.npy"), ("1", "a.npy")]


def test_a_two_band_network_reads_band2_rows_itself(tmp_path, arc_image, celestial_wcs,
                                                    write_fits, capsys):
    """A network trained on two bands gets both bands of a band2 row, as ``ensai predict
    --bands`` feeds it (lens_light_path=network); a row without band2 is skipped with its
    reason, and a lens-light path is refused before any lens is predicted."""
    import keras

    inp = keras.Input((192, 192, 2))
    pooled = keras.layers.GlobalAveragePooling2D()(inp)  # depends on both bands
    keras.Model(inp, keras.layers.Dense(5, kernel_initializer="ones")(pooled)).save(
        tmp_path / "two.keras")
    model = str(tmp_path / "two.keras")
    arcs = arc_image(220) - 0.01
    y, x = np.mgrid[0:220, 0:220] - 109.5
    lens = np.exp(-np.hypot(x, y) / 8.0)
    wcs = celestial_wcs(0.04, 220)
    blue = write_fits(tmp_path / "b.fits", arcs + 0.5 * lens + 0.05, wcs)
    red = write_fits(tmp_path / "r.fits", arcs / 1.5 + 3.0 * lens + 0.05, wcs)
    np.save(tmp_path / "one.npy", arc_image())
    (tmp_path / "cat.csv").write_text("path,band2,x,y\nb.fits,r.fits,109.5,109.5\none.npy,,,\n")
    summary = catalog.predict_catalog(model, tmp_path / "cat.csv", tmp_path / "out.jsonl")
    assert (summary.written, summary.failed) == (1, 1)
    assert "line 3: one.npy: the model reads two bands" in capsys.readouterr().err
    (row,) = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    (expected,) = realdata.predict_two_band(model, blue, red, output=str(tmp_path / "b.json"),
                                            x=109.5, y=109.5)
    assert row["lens_light_path"] == expected["lens_light_path"] == "network"
    for key in ("theta_e", "e_x", "x_pix", "ra_deg"):
        assert row[key] == pytest.approx(expected[key], rel=1e-5), key
    assert isinstance(row["flags"], list)  # those of the blue band
    with pytest.raises(InputError, match="reads both bands itself"):
        catalog.predict_catalog(model, tmp_path / "cat.csv", tmp_path / "o2.csv",
                                lens_light="ica")
    with pytest.raises(InputError, match="reads two bands"):
        load_table_predictor(model)
