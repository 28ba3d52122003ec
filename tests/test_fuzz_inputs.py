"""Fuzz tests of what users hand the package: images, configs and model paths.

Every bad input must give an ``EnsaiError`` whose message names the file (and
through ``cli.main`` a one-line message and exit status 2, never a
traceback); every odd-but-valid input (integer, big-endian, BSCALE/BZERO
FITS) must give the same answer as the plain float image.

The hypothesis example count is small by default; ``tools/stress.py`` raises
it through the ``ENSAI_FUZZ_EXAMPLES`` environment variable.
"""

import os
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ensai_tf import cli, conventions
from ensai_tf.preprocess import images as prep
from ensai_tf import inference
from ensai_tf.config import load_config
from ensai_tf.errors import EnsaiError

fits = pytest.importorskip("astropy.io.fits")
from astropy.wcs import WCS  # noqa: E402

N_EXAMPLES = int(os.environ.get("ENSAI_FUZZ_EXAMPLES", "8"))
FUZZ = settings(max_examples=N_EXAMPLES, deadline=None, database=None,
                derandomize="ENSAI_FUZZ_EXAMPLES" not in os.environ,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
NPIX = 48  # small images: the properties do not depend on the size
SCALE = 0.04


def _arc(npix=NPIX):
    """A positive ring of radius 0.5" on a (npix, npix) grid of 0.04" pixels."""
    x, y = conventions.pixel_grid(npix, SCALE)
    r = np.hypot(x, y)
    return np.exp(-0.5 * ((r - 0.5) / 0.08) ** 2) + 0.01


def _celestial_header(npix=NPIX):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [(npix + 1) / 2.0] * 2
    w.wcs.cdelt = [-SCALE / 3600.0, SCALE / 3600.0]
    return w.to_header()


def _good_fits_bytes(tmp_path):
    path = tmp_path / "good.fits"
    fits.PrimaryHDU(_arc().astype(np.float32), header=_celestial_header()).writeto(path)
    return path.read_bytes()


def _expect_named_error(path, **kwargs):
    """The library refuses `path` with an EnsaiError naming it."""
    with pytest.raises(EnsaiError) as info:
        prep.prepare_images(str(path), NPIX, **kwargs)
    assert os.path.basename(str(path)) in str(info.value), str(info.value)
    assert "\n" not in str(info.value), "the CLI prints errors on one line"
    return str(info.value)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A (NPIX, NPIX, 1) -> 5 .keras model (outputs = mean pixel * (k+1))."""
    import keras

    inputs = keras.Input((NPIX, NPIX, 1))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    dense = keras.layers.Dense(5, use_bias=False, name="out")
    model = keras.Model(inputs, dense(pooled))
    dense.set_weights([np.arange(1, 6, dtype=np.float32)[None, :]])
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    model.save(path)
    return str(path)


def _cli_refuses(argv, name, capsys):
    """cli.main(argv) exits 2 with one line naming `name`, no traceback."""
    status = cli.main(argv)
    err = capsys.readouterr().err
    assert status == 2, err
    assert "Traceback" not in err
    assert name in err, err
    assert len(err.strip().splitlines()) == 1, err


# ------------------------------------------------------------------ FITS files

def _fits_no_image(path):
    cols = fits.ColDefs([fits.Column(name="a", format="E", array=np.arange(3.0))])
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols)]).writeto(path)


def _fits_data(data, header=None):
    def write(path):
        fits.PrimaryHDU(data, header=header).writeto(path)
    return write


def _fits_non_celestial(path):
    w = WCS(naxis=2)
    w.wcs.ctype = ["WAVE", "TIME"]
    w.wcs.cdelt = [1.0, 1.0]
    fits.PrimaryHDU(_arc().astype(np.float32), header=w.to_header()).writeto(path)


def _fits_bad_wcs(path):
    hdu = fits.PrimaryHDU(_arc().astype(np.float32), header=_celestial_header())
    hdu.header["CDELT1"] = 0.0
    hdu.header["CDELT2"] = 0.0
    hdu.writeto(path)


BAD_FITS = {
    "no_image_hdu": _fits_no_image,
    "data_1d": _fits_data(np.arange(NPIX, dtype=np.float32), _celestial_header()),
    "data_3d_stack": _fits_data(np.ones((2, 3, NPIX, NPIX), np.float32)),
    "zero_size": _fits_data(np.zeros((0, NPIX), np.float32)),
    "all_nan": _fits_data(np.full((NPIX, NPIX), np.nan, np.float32), _celestial_header()),
    "one_inf": _fits_data(np.where(_arc() > 0.9, np.inf, _arc()).astype(np.float32),
                          _celestial_header()),
    "constant": _fits_data(np.ones((NPIX, NPIX), np.float32), _celestial_header()),
    "all_negative": _fits_data(-_arc().astype(np.float32), _celestial_header()),
    "no_wcs": _fits_data(_arc().astype(np.float32)),
    "non_celestial_wcs": _fits_non_celestial,
    "degenerate_wcs": _fits_bad_wcs,
}


@pytest.mark.parametrize("case", sorted(BAD_FITS))
def test_bad_fits_is_refused_naming_the_file(tmp_path, case):
    path = tmp_path / f"{case}.fits"
    BAD_FITS[case](path)
    _expect_named_error(path)


@pytest.mark.parametrize("content", [b"", b"SIMPLE  =", b"\x00" * 2880, b"not a fits file" * 300])
def test_garbage_fits_bytes_are_refused(tmp_path, content):
    path = tmp_path / "garbage.fits"
    path.write_bytes(content)
    _expect_named_error(path)


@FUZZ
@given(cut=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_fits_is_refused_or_read_in_full(tmp_path_factory, cut):
    """A FITS file cut anywhere is refused; never a traceback or partial image."""
    tmp = tmp_path_factory.mktemp("trunc")
    good = _good_fits_bytes(tmp)
    path = tmp / "cut.fits"
    path.write_bytes(good[: int(cut * len(good))])
    try:
        got = prep.prepare_images(str(path), NPIX)[0].image
    except EnsaiError as err:
        assert "cut.fits" in str(err), str(err)
    else:  # only the final block padding was cut: the image must be whole (exact)
        (tmp / "good.fits").write_bytes(good)
        want = prep.prepare_images(str(tmp / "good.fits"), NPIX)[0].image
        np.testing.assert_array_equal(got, want)


def test_fits_cut_inside_the_data_is_refused_not_zero_filled(tmp_path):
    """A file cut inside its data is refused, and the message says it is truncated."""
    good = _good_fits_bytes(tmp_path)
    path = tmp_path / "short.fits"
    path.write_bytes(good[:2880 + 4000])  # header block + part of the 9216 data bytes
    assert "truncated" in _expect_named_error(path)


def test_truncated_fits_error_comes_without_astropy_warnings(tmp_path):
    """The CLI's one-line error must not be preceded by astropy's warning lines."""
    import warnings

    good = _good_fits_bytes(tmp_path)
    path = tmp_path / "short.fits"
    path.write_bytes(good[:2880 + 4000])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _expect_named_error(path)
    assert [str(w.message) for w in caught] == []


@FUZZ
@given(data=st.binary(min_size=0, max_size=6000), prefix=st.booleans())
def test_random_bytes_fits_never_trace(tmp_path_factory, data, prefix):
    tmp = tmp_path_factory.mktemp("rand")
    path = tmp / "random.fits"
    head = _good_fits_bytes(tmp)[:2880] if prefix else b""
    path.write_bytes(head + data)
    try:
        out = prep.prepare_images(str(path), NPIX, pixel_scale=SCALE)
    except EnsaiError as err:
        assert "random.fits" in str(err) and "\n" not in str(err), str(err)
    else:  # a valid header + random data that happens to be a usable image
        assert all(np.isfinite(p.image).all() for p in out)


@pytest.mark.parametrize("variant", ["int16", "int32", "uint8", "big_endian", "bscale_bzero"])
def test_odd_but_valid_fits_give_the_float_answer(tmp_path, variant):
    """Integer, big-endian and scaled data are read as their physical values.

    Tolerance 1e-5 relative: the float32 prepared images of equal physical
    data differ only by rounding.
    """
    counts = np.round(_arc() * 200).astype(np.int16)  # fits uint8
    ref = tmp_path / "ref.fits"
    fits.PrimaryHDU(counts.astype(np.float32), header=_celestial_header()).writeto(ref)
    path = tmp_path / f"{variant}.fits"
    if variant == "big_endian":
        data = counts.astype(">f8")
    elif variant == "bscale_bzero":
        data = ((counts - 100) // 2).astype(np.int16)
    else:
        data = counts.astype(variant)
    hdu = fits.PrimaryHDU(data, header=_celestial_header())
    if variant == "bscale_bzero":
        hdu.header["BSCALE"] = 2.0
        hdu.header["BZERO"] = 100.0
        expect = data.astype(np.float64) * 2 + 100
        fits.PrimaryHDU(expect.astype(np.float32), header=_celestial_header()).writeto(
            ref, overwrite=True)
    hdu.writeto(path)
    got = prep.prepare_images(str(path), NPIX)[0].image
    want = prep.prepare_images(str(ref), NPIX)[0].image
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ .npy files

BAD_NPY = {
    "object_array": np.array([{"a": 1}, None], dtype=object),
    "strings": np.array(["a", "b"]),
    "complex": np.ones((NPIX, NPIX), np.complex64),
    "bool": np.ones((NPIX, NPIX), bool),
    "rank_1": np.ones(NPIX),
    "rank_5": np.ones((1, 1, 2, NPIX, NPIX)),
    "empty": np.zeros((0,)),
    "empty_2d": np.zeros((0, NPIX)),
    "empty_stack": np.zeros((0, NPIX, NPIX)),
    "structured": np.zeros((NPIX, NPIX), dtype=[("a", "f4"), ("b", "f4")]),
    "all_nan": np.full((NPIX, NPIX), np.nan),
    "constant": np.full((NPIX, NPIX), 3.0),
}


@pytest.mark.parametrize("case", sorted(BAD_NPY))
def test_bad_npy_is_refused_naming_the_file(tmp_path, case):
    path = tmp_path / f"{case}.npy"
    np.save(path, BAD_NPY[case], allow_pickle=True)
    _expect_named_error(path, pixel_scale=SCALE)


def test_object_npy_is_never_unpickled(tmp_path):
    """An object array whose unpickling would run code is refused unread."""
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.npy"
    np.save(path, np.array([Evil()], dtype=object), allow_pickle=True)
    marker.unlink(missing_ok=True)
    msg = _expect_named_error(path)
    assert not marker.exists(), "the pickle was executed"
    assert "evil.npy" in msg


@FUZZ
@given(cut=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_npy_is_refused(tmp_path_factory, cut):
    tmp = tmp_path_factory.mktemp("npy")
    full = tmp / "full.npy"
    np.save(full, _arc())
    good = full.read_bytes()
    path = tmp / "cut.npy"
    path.write_bytes(good[: int(cut * len(good))])
    _expect_named_error(path, pixel_scale=SCALE)


@FUZZ
@given(data=st.binary(max_size=3000))
def test_random_bytes_npy_never_trace(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("rnpy") / "random.npy"
    path.write_bytes(b"\x93NUMPY" + data)
    _expect_named_error(path, pixel_scale=SCALE)


@FUZZ
@given(shape=st.lists(st.integers(0, 4), min_size=0, max_size=5),
       dtype=st.sampled_from(["f4", ">f8", "i1", "u2", "c8", "?", "U1", "m8", "f2"]),
       fill=st.sampled_from([0.0, 1.0, -1.0, np.nan, np.inf]))
def test_random_shape_and_dtype_npy(tmp_path_factory, shape, dtype, fill):
    """Any small array is refused by name or gives finite images of the right size."""
    path = tmp_path_factory.mktemp("snpy") / "arr.npy"
    arr = np.full(shape, fill).astype(dtype) if dtype not in ("U1", "m8") else \
        np.zeros(shape, dtype=dtype)
    np.save(path, arr)
    try:
        out = prep.prepare_images(str(path), NPIX, pixel_scale=SCALE)
    except EnsaiError as err:
        assert "arr.npy" in str(err), str(err)
    else:
        assert out and all(p.image.shape == (NPIX, NPIX, 1) for p in out)
        assert all(np.isfinite(p.image).all() for p in out)


_YAML_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                               max_size=3),
    max_leaves=6)
_SECTIONS = ["image", "lens", "source", "simulate", "observe", "data", "model", "train", "eval"]


@FUZZ
@given(doc=st.dictionaries(st.sampled_from(_SECTIONS) | st.text(max_size=6),
                           st.dictionaries(st.text(max_size=12), _YAML_VALUES, max_size=3)
                           | _YAML_VALUES, max_size=3))
def test_random_config_documents(tmp_path_factory, doc):
    """A YAML document of random sections/keys/values loads or is refused by name."""
    import yaml

    path = tmp_path_factory.mktemp("rcfg") / "random.yaml"
    path.write_text(yaml.safe_dump(doc))
    try:
        load_config(str(path), preset="smoke")
    except EnsaiError as err:
        assert "random.yaml" in str(err) and "\n" not in str(err), str(err)


def test_odd_but_valid_npy_give_the_float_answer(tmp_path):
    """int16 and big-endian arrays equal the float64 answer (rtol 1e-5: rounding)."""
    counts = np.round(_arc() * 1000)
    results = []
    for name, arr in [("f", counts), ("i", counts.astype(np.int16)), ("b", counts.astype(">f4"))]:
        path = tmp_path / f"{name}.npy"
        np.save(path, arr)
        results.append(prep.prepare_images(str(path), NPIX, pixel_scale=SCALE)[0].image)
    for got in results[1:]:
        np.testing.assert_allclose(got, results[0], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ configs

BAD_YAML = {
    "syntax": "train: {learning_rate: [1, 2\n",
    "tabs": "train:\n\tlearning_rate: 1\n",
    "list_top": "- train\n- data\n",
    "scalar_top": "42\n",
    "unknown_section": "nonsense: {a: 1}\n",
    "unknown_key": "train: {no_such_key: 1}\n",
    "wrong_type": "train: {learning_rate: fast}\n",
    "section_not_mapping": "train: [1, 2, 3]\n",
    "negative": "train: {learning_rate: -1.0}\n",
    "bool_for_number": "train: {learning_rate: true}\n",
    "nan": "train: {learning_rate: .nan}\n",
    "python_tag": "train: !!python/object/apply:os.system ['true']\n",
}


@pytest.mark.parametrize("case", sorted(BAD_YAML))
def test_bad_config_yaml_is_refused_naming_the_file(tmp_path, case):
    path = tmp_path / f"{case}.yaml"
    path.write_text(BAD_YAML[case])
    with pytest.raises(EnsaiError) as info:
        load_config(str(path), preset="smoke")
    assert f"{case}.yaml" in str(info.value), str(info.value)
    assert "\n" not in str(info.value), "the CLI prints errors on one line"


@FUZZ
@given(data=st.binary(max_size=400))
def test_random_bytes_config_never_trace(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("cfg") / "random.yaml"
    path.write_bytes(data)
    try:
        load_config(str(path), preset="smoke")
    except EnsaiError as err:
        assert "random.yaml" in str(err) and "\n" not in str(err), str(err)


def test_bad_config_through_the_cli(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("train: [1\n")
    _cli_refuses(["simulate", "--config", str(path), "--out", str(tmp_path / "o"), "-n", "1"],
                 "broken.yaml", capsys)


# ------------------------------------------------------------------ model paths

def _model_missing(tmp):
    return tmp / "nope"


def _model_empty_dir(tmp):
    (tmp / "empty").mkdir()
    return tmp / "empty"


def _model_half_saved(tmp):
    d = tmp / "half" / "saved_model"
    d.mkdir(parents=True)
    (d / "saved_model.pb").write_bytes(b"\x08\x01garbage")
    return tmp / "half"


def _model_saved_no_variables(tmp):
    d = tmp / "novars"
    d.mkdir()
    (d / "saved_model.pb").write_bytes(b"")
    return d


def _model_random_keras(tmp):
    path = tmp / "random.keras"
    path.write_bytes(os.urandom(2000))
    return path


def _model_zip_not_keras(tmp):
    path = tmp / "other.keras"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "not a keras model")
    return path


def _model_other_program(tmp):
    d = tmp / "pytorch_run"
    d.mkdir()
    (d / "model.pt").write_bytes(b"\x80\x02")
    (d / "config.json").write_text("{}")
    return d


def _model_file_not_keras(tmp):
    path = tmp / "weights.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n")
    return path


BAD_MODELS = {
    "missing": _model_missing,
    "empty_dir": _model_empty_dir,
    "half_saved_model": _model_half_saved,
    "saved_model_no_variables": _model_saved_no_variables,
    "random_keras": _model_random_keras,
    "zip_not_keras": _model_zip_not_keras,
    "other_program_dir": _model_other_program,
    "unknown_file": _model_file_not_keras,
}


@pytest.mark.parametrize("case", sorted(BAD_MODELS))
def test_bad_model_path_is_refused_naming_it(tmp_path, case):
    path = BAD_MODELS[case](tmp_path)
    with pytest.raises(EnsaiError) as info:
        inference.load_predictor(str(path))
    assert path.name in str(info.value), str(info.value)
    assert "\n" not in str(info.value), "the CLI prints errors on one line"


@FUZZ
@given(cut=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_keras_is_refused(tmp_path_factory, tiny_model, cut):
    good = open(tiny_model, "rb").read()
    path = tmp_path_factory.mktemp("k") / "cut.keras"
    path.write_bytes(good[: int(cut * len(good))])
    with pytest.raises(EnsaiError) as info:
        inference.load_predictor(str(path))
    assert "cut.keras" in str(info.value)


# ------------------------------------------------------------------ through the CLI

@pytest.mark.parametrize("case", ["all_nan", "data_1d", "no_image_hdu"])
def test_cli_predict_bad_fits_exits_2_naming_it(tmp_path, tiny_model, case, capsys):
    path = tmp_path / f"{case}.fits"
    BAD_FITS[case](path)
    _cli_refuses(["predict", tiny_model, str(path), "--pixel-scale", str(SCALE)],
                 f"{case}.fits", capsys)


@pytest.mark.parametrize("case", ["object_array", "rank_5"])
def test_cli_predict_bad_npy_exits_2_naming_it(tmp_path, tiny_model, case, capsys):
    path = tmp_path / f"{case}.npy"
    np.save(path, BAD_NPY[case], allow_pickle=True)
    _cli_refuses(["predict", tiny_model, str(path), "--pixel-scale", str(SCALE)],
                 f"{case}.npy", capsys)


@pytest.mark.parametrize("case", ["missing", "half_saved_model", "random_keras"])
def test_cli_predict_bad_model_exits_2_naming_it(tmp_path, case, capsys):
    img = tmp_path / "img.npy"
    np.save(img, _arc())
    path = BAD_MODELS[case](tmp_path)
    _cli_refuses(["predict", str(path), str(img), "--pixel-scale", str(SCALE)],
                 path.name, capsys)
