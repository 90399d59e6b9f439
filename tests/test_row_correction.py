"""Row noise through the pipeline: measured per frame, kept out of the read-noise map, and the
products of data without row noise unchanged by ``--row-correction auto``.

One simulated sensor (96 x 128, 5 temperatures x 8 frames) twice from one seed: without row
noise and with row noise of 0.6 x the read noise; the truth knows every frame's row offsets.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from bias_pipeline import PipelineConfig, run_bias_pipeline
from bias_pipeline.model import BiasModel
from bias_pipeline.simulate import SimulationSpec, SimulationTruth, simulate_dataset

SPEC = SimulationSpec(shape=(96, 128), frames_per_temperature=8, seed=21)
ROW_NOISE = 0.6  # x the read noise


def _run(truth: SimulationTruth, out: Path, mode: str) -> BiasModel:
    assert truth.raw_dir is not None
    config = PipelineConfig(row_correction=mode, show_progress=False, evaluation=False, generate_set=False)
    return run_bias_pipeline(truth.raw_dir, out, config=config).model


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("rows")
    clean = simulate_dataset(root / "clean", SPEC)
    noisy = simulate_dataset(
        root / "noisy", SimulationSpec(**{**vars(SPEC), "row_noise_dn": ROW_NOISE * SPEC.read_noise_dn})
    )
    return {
        "root": root,
        "clean": clean,
        "noisy": noisy,
        "clean_auto": _run(clean, root / "clean_auto", "auto"),
        "clean_off": _run(clean, root / "clean_off", "off"),
        "noisy_auto": _run(noisy, root / "noisy_auto", "auto"),
        "noisy_off": _run(noisy, root / "noisy_off", "off"),
        "noisy_on": _run(noisy, root / "noisy_on", "on"),
    }


def _normal(truth: SimulationTruth) -> np.ndarray:
    assert truth.noisy_mask is not None and truth.dead_mask is not None
    return ~(truth.hot_mask | truth.noisy_mask | truth.dead_mask)


def _same_products(first: Path, second: Path) -> int:
    """Assert that every FITS product of two output folders holds the same data; return how many
    images were compared."""
    compared = 0
    for path in sorted(first.rglob("*.fits")):
        twin = second / path.relative_to(first)
        with fits.open(path) as one, fits.open(twin) as other:
            for hdu_one, hdu_other in zip(one, other, strict=True):
                if hdu_one.is_image and hdu_one.data is not None:
                    assert np.array_equal(hdu_one.data, hdu_other.data, equal_nan=True), (path, hdu_one.name)
                    compared += 1
                elif hdu_one.data is not None:  # a table: DQ_DEF, the groups
                    assert hdu_one.data.tobytes() == hdu_other.data.tobytes(), (path, hdu_one.name)
    return compared


def test_without_row_noise_auto_and_off_give_the_same_products(runs: dict[str, object]) -> None:
    root = runs["root"]
    assert isinstance(root, Path)
    assert _same_products(root / "clean_off", root / "clean_auto") >= 10
    for path in sorted((root / "clean_auto" / "masters").glob("*.fits")):
        assert fits.getheader(path)["ROWNOISE"] == 0.0


def test_with_row_noise_auto_corrects_as_on_does(runs: dict[str, object]) -> None:
    # auto's second pass reuses the first pass's offsets; on measures them in one pass.
    root = runs["root"]
    assert isinstance(root, Path)
    assert _same_products(root / "noisy_on", root / "noisy_auto") >= 10
    assert (root / "noisy_on" / "frames_manifest.csv").read_text() == (
        root / "noisy_auto" / "frames_manifest.csv"
    ).read_text()


def test_manifest_row_noise_is_each_frames_truth(runs: dict[str, object]) -> None:
    noisy, root = runs["noisy"], runs["root"]
    assert isinstance(noisy, SimulationTruth) and isinstance(root, Path)
    truth = {p.name: float(r) for p, r in zip(noisy.frame_paths, noisy.frame_row_noise, strict=True)}
    with open(root / "noisy_auto" / "frames_manifest.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["status"] == "used"]
    assert len(rows) == len(truth)
    ratios = np.array([float(row["row_noise_adu"]) / truth[Path(row["path"]).name] for row in rows])
    # 96 rows a frame: an amplitude from them scatters by about 1 / sqrt(2 x 96) = 7 % of itself.
    assert np.all(np.abs(ratios - 1.0) < 0.2), ratios
    assert abs(float(np.median(ratios)) - 1.0) < 0.05
    for path in sorted((root / "noisy_auto" / "masters").glob("*.fits")):
        removed = fits.getheader(path)["ROWNOISE"]
        assert abs(removed / (ROW_NOISE * SPEC.read_noise_dn * 16) - 1.0) < 0.2


def test_read_noise_map_keeps_row_noise_out(runs: dict[str, object]) -> None:
    clean, noisy = runs["clean"], runs["noisy"]
    assert isinstance(clean, SimulationTruth) and isinstance(noisy, SimulationTruth)
    normal = _normal(clean)
    reference = float(np.nanmedian(runs["clean_auto"].read_noise[normal]))  # type: ignore[attr-defined]
    corrected = float(np.nanmedian(runs["noisy_auto"].read_noise[normal]))  # type: ignore[attr-defined]
    left_in = float(np.nanmedian(runs["noisy_off"].read_noise[normal]))  # type: ignore[attr-defined]
    assert corrected <= 1.03 * reference
    # Off, the row noise is in the map: sqrt(1 + 0.6^2) = 1.17 times the read noise.
    assert left_in > 1.1 * reference
    assert math.isclose(left_in / reference, math.hypot(1.0, ROW_NOISE), rel_tol=0.05)


@pytest.mark.parametrize("run", ["noisy_auto", "noisy_off"])
def test_pulls_of_a_and_b_stay_honest_with_row_noise(runs: dict[str, object], run: str) -> None:
    # Corrected or not, each master keeps its frames' mean row offsets (correlated along a row);
    # step 3 counts them in sigma_a and sigma_b, so the pulls scatter as a unit normal.
    noisy, model = runs["noisy"], runs[run]
    assert isinstance(noisy, SimulationTruth) and isinstance(model, BiasModel)
    assert model.covariance is not None and model.dq is not None
    unflagged = _normal(noisy) & (model.dq == 0) & np.isfinite(model.a_map)
    for index, (fitted, true) in enumerate(((model.a_map, noisy.a_map), (model.b_map, noisy.b_map))):
        sigma = np.sqrt(np.asarray(model.covariance[index, index], dtype=np.float64))
        pull = ((fitted - true) / sigma)[unflagged]
        assert 0.9 < float(np.std(pull)) < 1.1, (index, float(np.std(pull)))
