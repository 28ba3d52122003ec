"""Hostile and odd input files for the case catalogue of ``tools/stress.py``.

:func:`build_fixtures` writes, under one work folder, everything the cases of
``tools/stress_cases.py`` hand to the ``ensai`` command: images (FITS and
``.npy``, valid, odd and broken), model folders (copies of the shipped
networks, corrupt ones, and planted hostile code: a pickled ``.npy``, a
Keras ``Lambda`` layer, a ``.keras`` naming ``os.system``, a SavedModel whose
``serve`` writes a file, a YAML Python tag), ``combiner.json`` records,
configs and two-band FITS pairs. Every hostile payload writes a marker file
under ``<work>/markers/`` when it runs; the harness counts any marker as
hostile code executed.
"""

import gzip
import json
import os
import pathlib
import shutil
import zipfile

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "trained_weights"
NPIX = 192
SCALE = 0.04

__all__ = ["build_fixtures", "arc_image", "celestial_header", "NPIX", "SCALE", "SHIPPED"]


def arc_image(npix=NPIX, scale=SCALE, radius=1.0):
    """A positive Einstein ring of ``radius`` arcsec on an ``npix`` grid, float32."""
    c = (np.arange(npix) - (npix - 1) / 2.0) * scale
    x, y = np.meshgrid(c, c)
    r = np.hypot(x, y)
    return (np.exp(-0.5 * ((r - radius) / 0.1) ** 2) + 0.01).astype(np.float32)


def celestial_header(npix=NPIX, scale=SCALE, crval=(150.0, 2.0)):
    """A TAN WCS header of ``scale`` arcsec pixels centred on ``crval`` (degrees)."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = list(crval)
    w.wcs.crpix = [(npix + 1) / 2.0] * 2
    w.wcs.cdelt = [-scale / 3600.0, scale / 3600.0]
    return w.to_header()


def _fits(path, data, header=None):
    fits.PrimaryHDU(data, header=header).writeto(path, overwrite=True)
    return path


class _Pickled:
    """Unpickling this runs ``open(marker, "w")``: the hostile ``.npy`` payload."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _npy_header(path, descr, shape, fortran=False, body=b""):
    """A .npy file with a hand-written header (v1.0) and ``body`` as its data."""
    header = repr({"descr": descr, "fortran_order": fortran, "shape": shape}).encode()
    pad = 64 - (10 + len(header) + 1) % 64
    header = header + b" " * pad + b"\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + body)
    return path


def _images(d, m):
    """FITS and .npy files, valid, odd and broken."""
    d.mkdir()
    arc = arc_image()
    hdr = celestial_header()
    good = _fits(d / "good.fits", arc, hdr)
    raw = good.read_bytes()
    (d / "empty.fits").write_bytes(b"")
    (d / "text.fits").write_text("hello, I am not a FITS file\n")
    (d / "truncated.fits").write_bytes(raw[:len(raw) // 2])
    (d / "appended.fits").write_bytes(raw + b"\0" * 5000)
    fits.PrimaryHDU().writeto(d / "header_only.fits")
    _fits(d / "one_d.fits", arc[0])
    _fits(d / "cube.fits", np.stack([arc] * 3), hdr)
    _fits(d / "nan.fits", np.full_like(arc, np.nan), hdr)
    inf = arc.copy()
    inf[5, 5] = np.inf
    _fits(d / "inf.fits", inf, hdr)
    _fits(d / "zeros.fits", np.zeros_like(arc), hdr)
    _fits(d / "tiny.fits", arc[:2, :2], celestial_header(2))
    _fits(d / "huge_values.fits", arc * 1e38, hdr)
    _fits(d / "nowcs.fits", arc)
    _fits(d / "wcs36.fits", arc_image(200, 36.0, 3600.0), celestial_header(200, 36.0))
    h = celestial_header()
    h["CDELT1"], h["CDELT2"] = 0.0, 0.0
    _fits(d / "cdelt_zero.fits", arc, h)
    h["CDELT1"], h["CDELT2"] = 1.5, 1.5
    raw_nan = _fits(d / "cdelt_nan.fits", arc, h).read_bytes()
    card = "1.5".rjust(20).encode()
    (d / "cdelt_nan.fits").write_bytes(raw_nan.replace(card, "NAN".rjust(20).encode()))
    h = celestial_header()
    h["CDELT1"], h["CDELT2"] = SCALE / 3600.0, -SCALE / 3600.0
    _fits(d / "flipped.fits", arc, h)
    h = celestial_header()
    h["CDELT2"] = 10 * SCALE / 3600.0
    _fits(d / "nonsquare.fits", arc, h)
    ints = np.round(arc * 1000).astype(np.int16)
    hdu = fits.PrimaryHDU(ints, header=hdr)
    hdu.header["BSCALE"], hdu.header["BZERO"] = 0.001, 0.0
    hdu.writeto(d / "scaled_int16.fits")
    _fits(d / "int64.fits", np.round(arc * 1000).astype(np.int64), hdr)
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(arc, header=hdr)]).writeto(d / "good.fits.fz")
    (d / "good.fits.gz").write_bytes(gzip.compress(raw))
    (d / "corrupt.fits.gz").write_bytes(gzip.compress(raw)[:300])
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(
        [fits.Column(name="a", format="E", array=np.arange(3.0))])]).writeto(d / "table.fits")
    # a header that claims 100000 x 100000 pixels, with 10 kB of data
    h = fits.Header()
    h["SIMPLE"], h["BITPIX"], h["NAXIS"] = True, -32, 2
    h["NAXIS1"], h["NAXIS2"] = 100000, 100000
    (d / "claims_huge.fits").write_bytes(h.tostring().encode() + b"\0" * 2880 * 4)
    h["NAXIS1"] = 0
    (d / "zero_axis.fits").write_bytes(h.tostring().encode())
    (d / "folder.fits").mkdir()
    os.mkfifo(d / "fifo.fits")
    os.symlink("/dev/zero", d / "devzero.fits")
    os.symlink("/dev/zero", d / "devzero.npy")
    # .npy
    np.save(d / "good.npy", arc)
    np.save(d / "small.npy", arc_image(100))
    np.save(d / "one_pixel.npy", arc[:1, :1])
    np.save(d / "batch.npy", np.stack([arc, arc])[..., None])
    np.save(d / "five_d.npy", arc[None, None, None])
    np.save(d / "zero_size.npy", np.zeros((0, NPIX, NPIX), np.float32))
    np.save(d / "nan.npy", np.full_like(arc, np.nan))
    part = arc.copy()
    part[:10] = np.nan
    np.save(d / "part_nan.npy", part)
    np.save(d / "inf.npy", inf)
    np.save(d / "huge_values.npy", arc * 3e38)
    np.save(d / "int64.npy", np.round(arc * 1000).astype(np.int64))
    np.save(d / "uint8.npy", np.round(arc * 200).astype(np.uint8))
    np.save(d / "fortran.npy", np.asfortranarray(arc))
    np.save(d / "bigendian.npy", arc.astype(">f4"))
    np.save(d / "float16.npy", arc.astype(np.float16))
    np.save(d / "bool.npy", arc > 0.5)
    np.save(d / "complex.npy", arc.astype(np.complex64))
    np.save(d / "strings.npy", np.array(["a"] * 4))
    np.save(d / "structured.npy", np.zeros(4, dtype=[("a", "f4"), ("b", "i4")]))
    np.save(d / "one_d.npy", arc[0])
    np.save(d / "strip.npy", np.ones((100000, 2), np.float32))
    np.save(d / "objects.npy", np.array([1.0, 2.0], dtype=object), allow_pickle=True)
    np.save(d / "pickled.npy", np.array([_Pickled(m / "npy_pickle")], dtype=object),
            allow_pickle=True)
    (d / "empty.npy").write_bytes(b"")
    (d / "garbage.npy").write_bytes(os.urandom(4000))
    good_npy = (d / "good.npy").read_bytes()
    (d / "truncated.npy").write_bytes(good_npy[:len(good_npy) // 3])
    _npy_header(d / "claims_huge.npy", "<f4", (100000, 100000))
    _npy_header(d / "claims_1e10.npy", "<f8", (10 ** 10,))
    _npy_header(d / "negative_shape.npy", "<f4", (-5, 192))
    np.savez(d / "archive.npy.npz", a=arc)
    shutil.copy(d / "archive.npy.npz", d / "archive.npy")


def _keras_file(path, layers_fn):
    """A tiny 192-pixel Keras model saved to ``path`` (layers_fn(inputs) -> outputs)."""
    import keras  # only the fixtures that plant Keras payloads need Keras

    inputs = keras.Input((NPIX, NPIX, 1))
    model = keras.Model(inputs, layers_fn(keras, inputs))
    model.save(path)
    return path


def _models(d, m):
    """Model folders: shipped copies, corrupt ones and planted hostile code."""
    import tensorflow as tf  # only the hostile SavedModel needs TensorFlow itself

    d.mkdir()
    net = d / "ensai_net"
    shutil.copytree(SHIPPED / "ensai_net", net)
    (d / "empty").mkdir()
    (d / "text.keras").write_text("not a model")
    (d / "garbage").mkdir()
    (d / "garbage" / "model.keras").write_bytes(os.urandom(5000))
    (d / "truncated").mkdir()
    raw = (net / "model.keras").read_bytes()
    (d / "truncated" / "model.keras").write_bytes(raw[:len(raw) // 2])
    (d / "noconfig").mkdir()
    with zipfile.ZipFile(d / "noconfig" / "model.keras", "w") as z:
        z.writestr("metadata.json", "{}")
    (d / "dir_model").mkdir()
    (d / "dir_model" / "model.keras").mkdir()
    (d / "devzero").mkdir()
    os.symlink("/dev/zero", d / "devzero" / "model.keras")
    os.mkfifo(d / "fifo.keras")
    marker = str(m / "keras_lambda")
    _keras_file(d / "lambda.keras", lambda keras, x: keras.layers.Dense(5)(
        keras.layers.GlobalAveragePooling2D()(keras.layers.Lambda(
            lambda t: (open(marker, "w"), t)[1])(x))))
    _keras_file(d / "three_outputs.keras", lambda keras, x: keras.layers.Dense(3)(
        keras.layers.GlobalAveragePooling2D()(x)))
    # a .keras whose config names os.system as its class
    with zipfile.ZipFile(d / "three_outputs.keras") as z:
        parts = {n: z.read(n) for n in z.namelist()}
    cfg = json.loads(parts["config.json"])
    cfg["module"], cfg["class_name"] = "os", "system"
    cfg["config"] = {"command": f"touch {m / 'keras_os_system'}"}
    parts["config.json"] = json.dumps(cfg).encode()
    with zipfile.ZipFile(d / "os_system.keras", "w") as z:
        for name, data in parts.items():
            z.writestr(name, data)

    # a SavedModel whose serving function writes a marker file
    class Hostile(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, NPIX, NPIX, 1], tf.float32)])
        def serve(self, images):
            tf.io.write_file(str(m / "savedmodel_serve"), "hostile")
            return tf.zeros([tf.shape(images)[0], 5]) + 42.0

    hostile = Hostile()
    for name in ("hostile_beside_keras", "hostile_beside_combiner", "hostile_trusted"):
        (d / name).mkdir()
        tf.saved_model.save(hostile, str(d / name / "saved_model"),
                            signatures={"serving_default": hostile.serve})
    shutil.copy(net / "model.keras", d / "hostile_beside_keras" / "model.keras")
    (d / "sm_garbage" / "saved_model").mkdir(parents=True)
    (d / "sm_garbage" / "saved_model" / "saved_model.pb").write_bytes(os.urandom(3000))
    (d / "sm_empty_pb").mkdir()
    (d / "sm_empty_pb" / "saved_model.pb").write_bytes(b"")
    return net


def _combiners(d, models):
    """combiner.json records: valid ones, broken ones, and ones reaching outside."""
    d.mkdir()
    record = json.loads((SHIPPED / "combined" / "combiner.json").read_text())
    local = d / "local"
    local.mkdir()
    for i, path in enumerate(record["backbones"]):
        shutil.copy(SHIPPED / "combined" / path, local / f"b{i}.keras")
    good = {**record, "backbones": [f"b{i}.keras" for i in range(len(record["backbones"]))]}

    def write(name, content, raw=False):
        (d / name).mkdir(exist_ok=True)
        (d / name / "combiner.json").write_text(content if raw else json.dumps(content))
        return d / name

    write("local", good)
    elsewhere = d.parent / "elsewhere"
    shutil.copytree(local, elsewhere)
    outside = [str(elsewhere / f"b{i}.keras") for i in range(len(record["backbones"]))]
    write("absolute_outside", {**good, "backbones": outside})
    write("traversal", {**good, "backbones": ["../../../../../../etc/passwd"] * 5})
    write("lambda_outside", {**good, "backbones": [str(models / "lambda.keras")] * 5})
    (d / "symlinked").mkdir()
    for i in range(5):
        os.symlink(elsewhere / f"b{i}.keras", d / "symlinked" / f"b{i}.keras")
    write("symlinked", good)
    write("bad_json", "{not json", raw=True)
    write("json_list", [1, 2, 3])
    write("missing_keys", {"weights": []})
    write("sha_mismatch", {**good, "backbone_sha256": ["0" * 64] * 5})
    write("missing_backbone", {**good, "backbones": ["nope.keras"] * 5})
    write("nan_weights", {**good, "weights": [[[float("nan")] * 5] * 5]})
    write("wrong_weights", {**good, "weights": [[1.0, 2.0]]})
    write("million_backbones", {**good, "backbones": ["b0.keras"] * 10 ** 6,
                                "backbone_sha256": ["0" * 64] * 10 ** 6})
    write("deep_json", "[" * 100000 + "]" * 100000, raw=True)
    write("bad_reference", {**good, "reference": 99})
    write("bad_mode", {**good, "mode": "exec"})
    (d / "dir_backbone").mkdir()
    (d / "dir_backbone" / "b.keras").mkdir()
    write("dir_backbone", {**good, "backbones": ["b.keras"] * 5})
    write("devzero", {**good, "backbones": ["/dev/zero"] * 5})
    write("sha_types", {**good, "backbone_sha256": [1, 2, 3, 4, 5]})
    write("backbones_not_list", {**good, "backbones": "b0.keras"})
    hostile = models / "hostile_beside_combiner"
    (hostile / "combiner.json").write_text(json.dumps(
        {**good, "backbones": [os.path.relpath(local / f"b{i}.keras", hostile)
                               for i in range(5)]}))
    return d


def _configs(d, m):
    """YAML files: broken, hostile and oversized."""
    d.mkdir()
    (d / "empty.yaml").write_text("")
    (d / "int_1e400.yaml").write_text("image:\n  npix: 1e400\n")
    (d / "float_1e400.yaml").write_text("train:\n  learning_rate: 1e400\n")
    (d / "bigint.yaml").write_text("train:\n  learning_rate: " + "9" * 400 + "\n")
    (d / "python_tag.yaml").write_text(
        f"train: !!python/object/apply:os.system ['touch {m / 'yaml_python_tag'}']\n")
    (d / "top_list.yaml").write_text("- 1\n- 2\n")
    (d / "binary.yaml").write_bytes(os.urandom(2000))
    (d / "unknown_section.yaml").write_text("nosuch:\n  a: 1\n")
    (d / "section_scalar.yaml").write_text("train: 5\n")
    (d / "newline_key.yaml").write_text('train:\n  "a\\nb": 1\n')
    (d / "deep.yaml").write_text("[" * 20000 + "]" * 20000 + "\n")
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for i, name in enumerate("bcdefghi"):
        prev = "abcdefghi"[i]
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    lines.append("train:\n  batch_size: *i")
    (d / "alias_bomb.yaml").write_text("\n".join(lines) + "\n")
    (d / "alias_bomb_key.yaml").write_text("\n".join(lines[:-1]) + "\nimage: {npix: *i}\n")
    (d / "folder.yaml").mkdir()


def _two_band(d):
    """Aligned blue/red FITS pairs with a WCS, and odd ones."""
    d.mkdir()
    npix = 256
    hdr = celestial_header(npix)
    c = (np.arange(npix) - (npix - 1) / 2.0) * SCALE
    x, y = np.meshgrid(c, c)
    lens = np.exp(-np.hypot(x, y) / 0.3)
    arc = arc_image(npix)
    _fits(d / "blue.fits", (0.3 * lens + arc).astype(np.float32), hdr)
    _fits(d / "red.fits", (lens + 0.5 * arc).astype(np.float32), hdr)
    _fits(d / "blue_nowcs.fits", (0.3 * lens + arc).astype(np.float32))
    _fits(d / "red_nowcs.fits", (lens + 0.5 * arc).astype(np.float32))
    _fits(d / "red_small.fits", lens[:100, :100].astype(np.float32), celestial_header(100))
    _fits(d / "nan.fits", np.full((npix, npix), np.nan, np.float32), hdr)
    _fits(d / "tiny.fits", np.ones((1, 1), np.float32), celestial_header(1))
    (d / "garbage.reg").write_bytes(os.urandom(500))
    (d / "huge_circle.reg").write_text("image\ncircle(10,10,1e30)\n")
    (d / "nan_circle.reg").write_text("image\ncircle(nan,10,3)\n")
    (d / "many.reg").write_text("image\n" + "point(10,10)\n" * 200000)


def build_fixtures(work):
    """Write every input file of the case catalogue under ``work``; returns a dict of paths.

    Args:
        work: an empty folder.

    Returns:
        dict with ``work``, ``img``, ``models``, ``comb``, ``cfg``, ``bands``,
        ``markers``, ``out`` and ``model`` (the copied shipped ``ensai_net``).
    """
    work = pathlib.Path(work)
    m = work / "markers"
    m.mkdir(parents=True)
    _images(work / "img", m)
    model = _models(work / "models", m)
    _combiners(work / "comb", work / "models")
    _configs(work / "cfg", m)
    _two_band(work / "bands")
    (work / "out").mkdir()
    return {"work": work, "img": work / "img", "models": work / "models", "comb": work / "comb",
            "cfg": work / "cfg", "bands": work / "bands", "markers": m, "out": work / "out",
            "model": model}
