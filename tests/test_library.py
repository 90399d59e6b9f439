"""Choosing a model (BiasLibrary), the model as CCDData (BiasModel.at) and subtract_bias with a
library or a CCDData."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import CCDData, StdDevUncertainty, VarianceUncertainty

import bias_pipeline
from bias_pipeline import BiasLibrary, BiasModel, InputDataError, PipelineConfig, run_bias_pipeline, subtract_bias
from bias_pipeline.dates import format_date, parse_date
from bias_pipeline.simulate import SimulationSpec, simulate_dataset

from conftest import SHAPE

ccdproc = pytest.importorskip("ccdproc")

# Three small models of one sensor, told apart by their level (a = LEVEL everywhere):
# two quarters over -10..30 deg C and a hot-case model over 20..50 deg C.
MODELS = {
    "q1": (1000.0, (-10.0, 30.0), ("2026-01-01", "2026-01-10")),
    "q2": (2000.0, (-10.0, 30.0), ("2026-04-01", "2026-04-10")),
    "hot": (3000.0, (20.0, 50.0), ("2026-02-01", "2026-02-05")),
}
SLOPE = 2.0


def small_model(level: float, temperatures: tuple[float, float], dates: tuple[str, str] | None, **more) -> BiasModel:
    return BiasModel.from_maps(
        np.full(SHAPE, level),
        np.full(SHAPE, SLOPE),
        temperature_range=temperatures,
        date_range=None if dates is None else (parse_date(dates[0]), parse_date(dates[1])),
        **more,
    )


def save_models(root: Path, models: dict[str, tuple], **declared: dict[str, object]) -> Path:
    """Each model saved into ``root/<name>`` (a bias_model folder); ``declared[name]`` holds its
    VALID-FROM/VALID-TO (``valid_from=...``)."""
    for name, (level, temperatures, dates) in models.items():
        extra = {key: parse_date(value) for key, value in declared.get(name, {}).items()}
        small_model(level, temperatures, dates, **extra).save(root / name)
    return root


def level_of(model: BiasModel) -> float:
    return float(model.a_map[0, 0])


@pytest.fixture(scope="module")
def library_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_models(tmp_path_factory.mktemp("library"), MODELS)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory):
    """A real fitted model of a small simulated set (4 set points x 4 frames), with its truth."""
    root = tmp_path_factory.mktemp("fitted")
    spec = SimulationSpec(shape=SHAPE, temperatures=(-5.0, 5.0, 15.0, 25.0), frames_per_temperature=4, seed=11)
    truth = simulate_dataset(root / "sim", spec)
    run_bias_pipeline(
        truth.raw_dir,
        root / "out",
        truth.truth_dir / "hot_pixel_mask.fits",
        generate_set=False,
        config=PipelineConfig(show_progress=False),
    )
    model = BiasModel.load(root / "out")
    if model.date_range is None:  # the run's model carries the frames' dates once step 1 dates products
        model = dataclasses.replace(model, date_range=(min(truth.frame_dates), max(truth.frame_dates)))
    return model, truth, root


# ---------------------------------------------------------------------- BiasModel.at
def test_at_is_predict_with_its_uncertainty_mask_flags_and_header(fitted):
    model, truth, _ = fitted
    temperature = 10.0  # between set points
    bias = model.at(temperature)
    value, sigma = model.predict(temperature, return_sigma=True)
    assert isinstance(bias, CCDData) and bias.unit == "adu" and bias.data.dtype == np.float32
    np.testing.assert_array_equal(bias.data, value)
    assert isinstance(bias.uncertainty, StdDevUncertainty)
    np.testing.assert_array_equal(bias.uncertainty.array, sigma)
    # The uncertainty is p^T C p of the fit's covariance, p = (1, T).
    powers = np.array([1.0, temperature])
    by_hand = np.sqrt(np.einsum("p,pqij,q->ij", powers, np.asarray(model.covariance, dtype=np.float64), powers))
    good = ~model.mask
    np.testing.assert_allclose(bias.uncertainty.array[good], by_hand[good], rtol=1e-5)
    # ... and it is honest: the model's error against the truth is about one sigma.
    clean = good & ~truth.abnormal_mask & ~model.flagged
    z = (bias.data - truth.bias_adu(temperature))[clean] / bias.uncertainty.array[clean]
    # The standard deviation of about 3000 values is known to 1.3 %; the noise map behind the
    # covariance is itself estimated from 16 frames and the values are quantised to 12-bit
    # steps, which leaves z's spread within 10 to 20 % of one (1.06 measured with two seeds).
    assert 0.9 < float(np.std(z)) < 1.2, float(np.std(z))
    np.testing.assert_array_equal(bias.mask, model.flagged)
    np.testing.assert_array_equal(bias.flags, model.dq)
    assert bias.flags.dtype == np.uint32
    assert np.isnan(bias.data[model.mask]).all() and np.isfinite(bias.data[good]).all()
    header = bias.header
    assert header["TEMPERAT"] == temperature and header["TEMPERATURE"] == temperature
    assert header["EXTRAPOL"] is False and header["MODEL"] == model.law
    assert (header["TMIN"], header["TMAX"]) == model.temperature_range and header["TREF"] == model.tref
    assert header["NCOMBINE"] == sum(model.group_frames) == len(truth.frame_paths)
    assert header["DATE-BEG"] == format_date(model.date_range[0])
    assert header["DATE-END"] == format_date(model.date_range[1])
    assert header["BPVERS"] == bias_pipeline.__version__ and header["BUNIT"] == "adu"
    assert any("per-pixel bias at T = 0 deg C" in str(card) for card in header["COMMENT"])


# astropy's WCS reader fills MJD-BEG/MJD-END in from DATE-BEG/DATE-END when it reads the file.
@pytest.mark.filterwarnings("ignore:'datfix' made the change")
def test_at_writes_as_fits_and_warns_when_extrapolating(fitted, tmp_path, caplog):
    model, _, _ = fitted
    with caplog.at_level(logging.WARNING, logger="bias_pipeline.model"):
        bias = model.at(40.0)
    assert "extrapolating" in caplog.text and bias.header["EXTRAPOL"] is True
    bias.write(tmp_path / "bias_40C.fits", hdu_flags="FLAGS")
    back = CCDData.read(tmp_path / "bias_40C.fits", hdu_flags="FLAGS")
    assert back.header["TEMPERATURE"] == 40.0 and back.header["TEMPERAT"] == 40.0
    np.testing.assert_array_equal(back.data, bias.data)
    np.testing.assert_array_equal(back.mask, bias.mask)
    np.testing.assert_array_equal(back.flags, bias.flags)
    np.testing.assert_array_equal(back.uncertainty.array, bias.uncertainty.array)
    with pytest.raises(InputDataError, match="temperature"):
        model.at(float("nan"))


def test_at_without_fit_statistics_has_no_uncertainty():
    """A model made from maps has no covariance: no uncertainty rather than NaN everywhere."""
    bias = small_model(1000.0, (-10.0, 30.0), None).at(5.0)
    assert bias.uncertainty is None and not bias.mask.any() and float(bias.data[0, 0]) == 1010.0


def test_ccdproc_subtract_bias_and_nddata_arithmetic(fitted):
    model, truth, _ = fitted
    path = truth.frame_paths[0]
    temperature = float(fits.getheader(path)["TEMPERATURE"])
    data = fits.getdata(path).astype(np.float32)
    noise = np.full(SHAPE, truth.read_noise_adu, dtype=np.float32)
    frame_mask = np.zeros(SHAPE, dtype=bool)
    frame_mask[3, 5] = True
    ccd = CCDData(data, unit="adu", uncertainty=StdDevUncertainty(noise), mask=frame_mask)
    bias = model.at(temperature)
    for result in (ccdproc.subtract_bias(ccd, bias), ccd.subtract(bias)):
        expected = data - model.predict(temperature)
        good = ~model.mask
        np.testing.assert_allclose(result.data[good], expected[good], rtol=1e-6)
        assert np.isnan(result.data[model.mask]).all()  # no model there: NaN, and masked
        np.testing.assert_array_equal(result.mask, frame_mask | model.flagged)
        combined = np.hypot(noise, bias.uncertainty.array)
        np.testing.assert_allclose(result.uncertainty.array[good], combined[good], rtol=1e-6)
        assert result.unit == "adu"


# ---------------------------------------------------------------------- BiasLibrary.select
@pytest.mark.parametrize(
    ("temperature", "date", "chosen", "why"),
    [
        (0.0, "2026-01-05", "q1", "inside q1's dates: distance 0"),
        (0.0, "2026-03-20", "q2", "12 days from q2, 69 from q1"),
        (0.0, "2026-02-03", "q1", "hot is nearer in time but does not cover 0 deg C"),
        (40.0, "2026-04-05", "hot", "only hot covers 40 deg C, though q2 holds the date"),
        (25.0, "2026-02-03", "hot", "all three cover 25 deg C: hot holds the date"),
        (25.0, "2027-01-01", "q2", "all three cover 25 deg C: q2 is the nearest in time"),
        (0.0, 61050.0, "q1", "an MJD date: 2026-01-10, q1's last day"),
        (0.0, None, "q2", "no date: the latest DATE-END among those covering 0 deg C"),
        (40.0, None, "hot", "no date, only hot covers 40 deg C"),
    ],
)
def test_select_by_temperature_then_time(library_root, temperature, date, chosen, why):
    library = BiasLibrary(library_root)
    assert library.select_entry(temperature, date).path.name == chosen, why
    assert level_of(library.select(temperature, date)) == MODELS[chosen][0], why


def test_no_model_covers_the_temperature_the_nearest_extrapolates(library_root, caplog):
    library = BiasLibrary(library_root)
    with caplog.at_level(logging.WARNING, logger="bias_pipeline.library"):
        assert library.select_entry(60.0, "2026-01-05").path.name == "hot"  # 10 deg C beyond, the others 30
        assert "extrapolates" in caplog.text and "60 deg C" in caplog.text
        caplog.clear()
        assert library.select_entry(-20.0, "2026-01-05").path.name == "q1"  # q1 and q2 equally near: by time
        assert "extrapolates" in caplog.text
        caplog.clear()
        library.select_entry(10.0, "2026-01-05")
    assert caplog.text == ""


def test_ties_go_to_the_later_date_end_then_the_path(tmp_path):
    root = save_models(
        tmp_path,
        {
            "b_short": (1.0, (0.0, 20.0), ("2026-05-01", "2026-05-10")),
            "a_long": (2.0, (0.0, 20.0), ("2026-05-01", "2026-05-20")),
            "d_twin": (3.0, (0.0, 20.0), ("2026-07-01", "2026-07-10")),
            "c_twin": (4.0, (0.0, 20.0), ("2026-07-01", "2026-07-10")),
        },
    )
    library = BiasLibrary([root / name for name in ("d_twin", "c_twin", "b_short", "a_long")])
    assert library.select_entry(10.0, "2026-05-05").path.name == "a_long"  # both hold it: later DATE-END
    assert library.select_entry(10.0, "2026-07-05").path.name == "c_twin"  # same dates: the path
    assert library.select_entry(10.0).path.name == "c_twin"  # the newest: the twins, then the path
    assert [entry.path.name for entry in library] == ["a_long", "b_short", "c_twin", "d_twin"]


def test_declared_validity_is_a_hard_limit(tmp_path):
    """q1 valid from its first frame until superseded, q2 only from April (CRDS's USEAFTER),
    hot only in February."""
    root = save_models(
        tmp_path,
        MODELS,
        q1={"valid_from": "2026-01-01"},
        q2={"valid_from": "2026-04-01"},
        hot={"valid_from": "2026-02-01", "valid_to": "2026-02-28"},
    )
    library = BiasLibrary(root)
    # Nearest in time would be q2 (7 days, against 74) but it is not valid before April.
    assert library.select_entry(0.0, "2026-03-25").path.name == "q1"
    assert library.select_entry(0.0, "2026-05-01").path.name == "q2"  # both valid: the nearer
    assert library.select_entry(25.0, "2026-03-25").path.name == "q1"  # hot has expired
    assert library.select_entry(25.0, "2026-02-10").path.name == "hot"  # valid, and the nearest
    assert library.select_entry(0.0).path.name == "q2"  # no date: declared validity not consulted
    with pytest.raises(InputDataError, match="no bias model of the library is valid on 2025-12-01") as caught:
        library.select(0.0, "2025-12-01")
    message = str(caught.value)
    assert "\n" not in message and "2026-01-01T00:00:00..open" in message
    assert "2026-02-01T00:00:00..2026-02-28T00:00:00" in message
    # A model without VALID-* is never excluded for its date.
    plain = BiasLibrary([root / "q1", library_copy(root / "q2", tmp_path / "plain_q2")])
    assert plain.select_entry(0.0, "2026-03-25").path.name == "plain_q2"
    assert plain.select_entry(0.0, "2025-12-01").path.name == "plain_q2"


def library_copy(model_dir: Path, to: Path) -> Path:
    """``model_dir``'s model saved again at ``to`` without its declared validity."""
    model = dataclasses.replace(BiasModel.load(model_dir), valid_from=None, valid_to=None)
    model.save(to)
    return to


def test_a_model_without_dates_ranks_after_dated_ones(tmp_path, caplog):
    root = save_models(
        tmp_path,
        {"dated": (1.0, (0.0, 30.0), ("2026-01-01", "2026-01-10")), "undated": (2.0, (0.0, 30.0), None)},
    )
    save_models(tmp_path, {"undated_hot": (3.0, (30.0, 60.0), None)})
    library = BiasLibrary(root)
    assert library.select_entry(10.0, "2030-01-01").path.name == "dated"  # years away, still dated first
    assert library.select_entry(10.0).path.name == "dated"  # the newest: undated last
    with caplog.at_level(logging.WARNING, logger="bias_pipeline.library"):
        assert library.select_entry(45.0, "2026-01-05").path.name == "undated_hot"  # the only one covering 45
    assert "has no DATE-BEG/DATE-END" in caplog.text


def test_a_library_of_folders_files_and_folders_of_them(fitted, library_root, tmp_path):
    model, _, root = fitted
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    model.to_fits(shelf / "photsat_v3.fits")  # a one-file model under any name
    shutil.copytree(root / "out", shelf / "run_march", ignore=shutil.ignore_patterns("*.png", "*.html"))
    (shelf / "notes.txt").write_text("not a model")
    fits.PrimaryHDU(np.zeros((2, 2), np.float32), header=fits.Header({"PRODTYPE": "MASTER_BIAS"})).writeto(
        shelf / "master.fits"
    )
    library = BiasLibrary([shelf, library_root, library_root / "q1"])
    names = sorted(entry.path.name for entry in library)
    assert names == ["hot", "photsat_v3.fits", "q1", "q2", "run_march"]  # q1 counted once; master and notes left out
    assert len(library) == 5 and len(library.models) == 5
    run = next(entry for entry in library if entry.path.name == "run_march")
    assert run.header_path.name == "bias_model.fits" and run.temperature_range == model.temperature_range
    table = library.table()
    assert {row["path"] for row in table} == {str(entry.path) for entry in library}
    q1 = next(row for row in table if row["path"].endswith("q1"))
    assert (q1["tmin"], q1["tmax"], q1["date_beg"], q1["valid_from"]) == (-10.0, 30.0, "2026-01-01T00:00:00", None)
    text = library.describe()
    assert len(text.splitlines()) == 2 + len(library) and "2026-01-01T00:00:00..2026-01-10T00:00:00" in text
    # The maps are read once, when first selected.
    assert library.select(0.0, "2026-01-05") is library.select(5.0, "2026-01-06")


def test_library_errors_are_one_line_and_name_the_file(library_root, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bias_model.fits").write_bytes(b"not a FITS file at all" * 10)
    cases = [
        ([], "holds no model"),
        (tmp_path / "missing", "missing does not exist"),
        (broken, "broken/bias_model.fits cannot be read: not a FITS file"),
        (broken / "bias_model.fits", "broken/bias_model.fits cannot be read"),
        (tmp_path / "empty", "no model in"),
    ]
    (tmp_path / "empty").mkdir()
    master = tmp_path / "master.fits"
    fits.PrimaryHDU(np.zeros((2, 2)), header=fits.Header({"PRODTYPE": "MASTER_BIAS"})).writeto(master)
    cases.append((master, "is no bias model (PRODTYPE = MASTER_BIAS)"))
    shelf = tmp_path / "shelf"
    shutil.copytree(library_root, shelf)
    (shelf / "damaged.fits").write_bytes(b"\x00" * 100)
    cases.append((shelf, "damaged.fits cannot be read"))
    for paths, fragment in cases:
        with pytest.raises(InputDataError) as caught:
            BiasLibrary(paths)
        assert fragment in str(caught.value) and "\n" not in str(caught.value), (paths, str(caught.value))
    library = BiasLibrary(library_root)
    with pytest.raises(InputDataError, match="temperature must be a finite number"):
        library.select(float("nan"))
    with pytest.raises(InputDataError, match="date= 'last tuesday' is not an ISO date"):
        library.select(0.0, "last tuesday")


# ---------------------------------------------------------------------- subtract_bias
def test_subtract_bias_from_ccddata_combines_uncertainties_and_masks(fitted):
    model, truth, _ = fitted
    path = truth.frame_paths[-1]
    with fits.open(path) as hdul:
        data, header = hdul[0].data.astype(np.float32), hdul[0].header.copy()
    temperature = float(header["TEMPERATURE"])
    frame_mask = np.zeros(SHAPE, dtype=bool)
    frame_mask[10, :] = True
    variance = np.full(SHAPE, truth.read_noise_adu**2, dtype=np.float32)
    ccd = CCDData(data, unit="adu", uncertainty=VarianceUncertainty(variance), mask=frame_mask, meta=header)
    result = subtract_bias(ccd, model)  # the temperature from the CCDData's header
    assert isinstance(result, CCDData) and result.data.dtype == np.float32 and result.unit == "adu"
    good = ~model.mask
    expected = data - model.predict(temperature)
    np.testing.assert_allclose(result.data[good], expected[good], rtol=1e-6)
    _, sigma = model.predict(temperature, return_sigma=True)
    combined = variance + sigma.astype(np.float64) ** 2  # in quadrature, kept as the frame's kind
    assert isinstance(result.uncertainty, VarianceUncertainty)
    np.testing.assert_allclose(result.uncertainty.array[good], combined[good], rtol=1e-5)
    np.testing.assert_array_equal(result.mask, frame_mask | model.flagged)
    np.testing.assert_array_equal(result.flags, model.dq)
    assert result.header["INSTRUME"] == header["INSTRUME"]  # the frame's header kept
    assert result.header["BIASTEMP"] == temperature and "subtract_bias" in str(result.header["HISTORY"])
    assert result.header["BIASDBEG"] == format_date(model.date_range[0])
    # The input is left as it was.
    assert "BIASTEMP" not in ccd.header and ccd.data is not result.data
    np.testing.assert_array_equal(ccd.uncertainty.array, variance)
    np.testing.assert_array_equal(ccd.mask, frame_mask)
    # The same as the array form where both have values.
    as_array = subtract_bias(data, model, temperature)
    np.testing.assert_array_equal(result.data[good], as_array[good])
    # A frame without uncertainty carries the model's alone.
    alone = subtract_bias(CCDData(data, unit="adu"), model, temperature)
    np.testing.assert_allclose(alone.uncertainty.array[good], sigma[good])
    with pytest.raises(InputDataError, match="is in electron, the bias model in adu"):
        subtract_bias(CCDData(data, unit="electron"), model, temperature)
    with pytest.raises(InputDataError, match="pass temperature="):
        subtract_bias(CCDData(data, unit="adu"), model)


def write_dark(path: Path, level: float, temperature: float, date: str | None) -> Path:
    header = fits.Header()
    header["HIERARCH TEMPERATURE"] = temperature
    header["EXPOSURE"] = 30.0
    if date is not None:
        header["DATE-OBS"] = date
    fits.PrimaryHDU(np.full(SHAPE, level, dtype=np.float32), header=header).writeto(path)
    return path


def test_subtract_bias_with_a_library_reads_temperature_and_date(library_root, tmp_path, caplog):
    library = BiasLibrary(library_root)
    signal = 50.0
    # A frame of January at 5 deg C: q1; of March at 25 deg C: q2; of February at 25 deg C: hot.
    for name, temperature, date in (
        ("q1", 5.0, "2026-01-04T10:00:00"),
        ("q2", 25.0, "2026-03-30"),
        ("hot", 25.0, 61072.0),
    ):
        bias = MODELS[name][0] + SLOPE * temperature
        path = write_dark(tmp_path / f"dark_{name}.fits", bias + signal, temperature, date)
        np.testing.assert_allclose(subtract_bias(path, library), signal)
        frame = fits.getdata(path)
        np.testing.assert_allclose(subtract_bias(frame, library, temperature, date=date), signal)
        ccd = CCDData(frame, unit="adu", meta=fits.getheader(path))
        result = subtract_bias(ccd, library)
        np.testing.assert_allclose(result.data, signal)
        assert result.header["BIASFILE"] == str(library_root / name) and result.header["BIASTEMP"] == temperature
    # An array without a date, or a path without DATE-OBS: the newest covering model, said once.
    np.testing.assert_allclose(subtract_bias(np.full(SHAPE, 2060.0), library, 5.0), 50.0)  # q2
    undated = write_dark(tmp_path / "undated.fits", 2060.0, 5.0, None)
    with caplog.at_level(logging.WARNING, logger="bias_pipeline.subtract"):
        np.testing.assert_allclose(subtract_bias(undated, library), 50.0)
    assert "has no date" in caplog.text and "undated.fits" in caplog.text
    # An unreadable date is never a silent pick.
    bad = write_dark(tmp_path / "bad_date.fits", 2060.0, 5.0, "yesterday")
    with pytest.raises(InputDataError, match="bad_date.fits: date keyword DATE-OBS .*pass date="):
        subtract_bias(bad, library)
    np.testing.assert_allclose(subtract_bias(bad, library, date="2026-01-02"), 1050.0)  # q1: 2060 - 1010


def test_subtract_bias_call_forms(library_root):
    model = BiasModel.load(library_root / "q1")
    frame = np.full(SHAPE, 1100.0, dtype=np.float32)
    expected = np.full(SHAPE, 80.0, dtype=np.float32)  # 1100 - (1000 + 2 x 10)
    np.testing.assert_array_equal(subtract_bias(frame, model, 10.0), expected)
    np.testing.assert_array_equal(subtract_bias(frame, model=model, temperature=10.0), expected)  # the old name
    np.testing.assert_array_equal(subtract_bias(frame, model_or_library=model, temperature=10.0), expected)
    with pytest.raises(TypeError, match="twice"):
        subtract_bias(frame, model, 10.0, model=model)
    with pytest.raises(TypeError, match="needs a BiasModel or a BiasLibrary"):
        subtract_bias(frame, temperature=10.0)
    with pytest.raises(TypeError, match="not str"):
        subtract_bias(frame, "results/", 10.0)
    with pytest.raises(InputDataError, match="frame is 2x2 but the model is 48x64"):
        subtract_bias(np.zeros((2, 2)), model, 10.0)


def test_subtract_bias_from_ccddata_with_a_plain_meta_and_twelve_bit_values(library_root):
    library = BiasLibrary(library_root)
    # meta as a dict (CCDData's default), the date of January: q1 at 5 deg C, bias 1010 ADU.
    ccd = CCDData(
        np.full(SHAPE, 1060.0 / 16, dtype=np.float32),
        unit="adu",
        uncertainty=StdDevUncertainty(np.full(SHAPE, 2.0, dtype=np.float32)),
        meta={"TEMPERATURE": 5.0, "DATE-OBS": "2026-01-04", "OBSERVER": "night shift"},
    )
    result = subtract_bias(ccd, library, input_bits=12)  # raw 12-bit values: x16 first, uncertainty too
    np.testing.assert_allclose(result.data, 50.0)
    np.testing.assert_allclose(result.uncertainty.array, 32.0)  # from_maps models carry no uncertainty
    assert result.meta["OBSERVER"] == "night shift" and result.meta["BIASFILE"] == str(library_root / "q1")
    assert not isinstance(result.meta, fits.Header) and "BIASTEMP" not in ccd.meta


def test_a_library_is_shared_by_threads(library_root):
    """A dark pipeline's worker threads share one library: the same answers, one read per model."""
    from concurrent.futures import ThreadPoolExecutor

    library = BiasLibrary(library_root)
    frames = [np.full(SHAPE, 1010.0 + k, dtype=np.float32) for k in range(16)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda f: subtract_bias(f, library, 5.0, date="2026-01-04"), frames))
        models = list(pool.map(lambda _: library.select(5.0, "2026-01-04"), range(16)))
    for k, result in enumerate(results):
        np.testing.assert_array_equal(result, np.full(SHAPE, float(k), dtype=np.float32))
    assert all(model is models[0] for model in models)


def readme_block(heading: str) -> str:
    """The python block under ``heading`` of the README."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text[text.index(heading) :]
    return section[
        section.index("```python\n") + len("```python\n") : section.index("```\n", section.index("```python"))
    ]


@pytest.mark.filterwarnings("ignore:'datfix' made the change")
def test_the_readme_examples_run(library_root, tmp_path, monkeypatch, capsys):
    """The README's "Choosing a model" and "CCDData" examples, as written, one after the other."""
    shutil.copytree(library_root, tmp_path / "models")
    write_dark(tmp_path / "dark_0002.fits", 2100.0, 12.5, "2026-06-03T04:00:00")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    for heading in ("### Choosing a model: BiasLibrary", "### CCDData"):
        exec(compile(readme_block(heading), "README.md", "exec"), namespace)
    assert "bias library of 3 model(s)" in capsys.readouterr().out
    assert level_of(namespace["model"]) == MODELS["q2"][0]  # 12.5 deg C on 3 June: q2, the nearest in time
    np.testing.assert_allclose(namespace["by_us"].data, 2100.0 - (2000.0 + SLOPE * 12.5))
    assert CCDData.read(tmp_path / "bias_12.5C.fits", hdu_flags="FLAGS").header["TEMPERAT"] == 12.5
