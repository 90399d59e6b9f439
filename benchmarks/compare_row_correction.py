"""What row noise does to the model, with the row correction off, auto and on.

Simulates one CMOS sensor (the package's simulator: read noise 2 DN, 12-bit values x16, hot,
noisy and dead pixels, cosmic rays, column offsets and slopes) twice from the same seed: once
without row noise and once with row noise of ``--row-noise`` x the read noise (each frame, each
row: one common offset). Runs the pipeline on each and prints, as a Markdown table:

- the read-noise map (median over normal pixels) and its ratio to the run without row noise;
- the pulls of a and b, ``(fit - truth) / sigma`` over normal unflagged pixels: their standard
  deviation (1 when the uncertainties are honest);
- the per-frame row-noise amplitude in the manifest against the simulator's truth (median ratio);
- the noise of a dark frame at 10 deg C (50 ADU of dark current, the run's own row noise)
  after ``subtract_bias``, with and without its own row correction, against the same frame
  without row noise minus the model made without row noise.

    python benchmarks/compare_row_correction.py [--shape 128 256] [--frames 8] [--row-noise 0.6]
"""

from __future__ import annotations

import argparse
import csv
import math
import tempfile
from pathlib import Path

import numpy as np

from bias_pipeline import PipelineConfig, run_bias_pipeline, subtract_bias
from bias_pipeline.model import BiasModel
from bias_pipeline.simulate import SCALE, SimulationSpec, SimulationTruth, make_truth, simulate_dataset

DARK_ADU = 50.0
DARK_TEMPERATURE = 10.0


def _pulls(model: BiasModel, truth: SimulationTruth, normal: np.ndarray) -> tuple[float, float]:
    unflagged = normal & (model.dq == 0) & np.isfinite(model.a_map)
    assert model.covariance is not None
    sigma_a, sigma_b = (np.sqrt(np.asarray(model.covariance[index, index], dtype=np.float64)) for index in (0, 1))
    pull_a = (model.a_map - truth.a_map)[unflagged] / sigma_a[unflagged]
    pull_b = (model.b_map - truth.b_map)[unflagged] / sigma_b[unflagged]
    return float(np.std(pull_a)), float(np.std(pull_b))


def _manifest_ratio(out: Path, truth: SimulationTruth) -> float:
    truth_by_name = {p.name: float(r) for p, r in zip(truth.frame_paths, truth.frame_row_noise, strict=True)}
    ratios = []
    with open(out / "frames_manifest.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            name = Path(row["path"]).name
            if row["row_noise_adu"] and truth_by_name.get(name, 0.0) > 0:
                ratios.append(float(row["row_noise_adu"]) / truth_by_name[name])
    return float(np.median(ratios)) if ratios else math.nan


def _dark(spec: SimulationSpec, row_noise_dn: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A dark frame at DARK_TEMPERATURE of the simulated sensor, and the normal pixels."""
    population = make_truth(spec, np.random.default_rng(spec.seed))  # the sensor simulate_dataset drew
    rng = np.random.default_rng(seed)
    t = DARK_TEMPERATURE
    adu = population.a_map + population.b_map * t + population.c_map * t * t + DARK_ADU
    noise = rng.normal(0.0, spec.read_noise_dn, adu.shape) * population.noise_factor
    rows = np.random.default_rng(seed + 1).normal(0.0, row_noise_dn, adu.shape[0])[:, None]
    dn = np.clip(np.rint(adu / SCALE + noise + rows), 0, 4095)
    normal = ~(population.hot_mask | population.dead_mask | (population.noise_factor > 1))
    return (dn * SCALE).astype(np.float32), normal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=2, default=(128, 256))
    parser.add_argument("--frames", type=int, default=8, help="frames per temperature (5 temperatures)")
    parser.add_argument("--row-noise", type=float, default=0.6, help="row noise in units of the read noise")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    base = SimulationSpec(shape=tuple(args.shape), frames_per_temperature=args.frames, seed=args.seed)
    row_dn = args.row_noise * base.read_noise_dn
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        truths = {
            row_noise_dn: simulate_dataset(
                root / f"data_{index}", SimulationSpec(**{**vars(base), "row_noise_dn": row_noise_dn})
            )
            for index, row_noise_dn in enumerate((0.0, row_dn))
        }
        runs: dict[str, tuple[BiasModel, SimulationTruth, Path]] = {}
        for name, row_noise_dn, mode in (
            ("no row noise, auto", 0.0, "auto"),
            ("row noise, off", row_dn, "off"),
            ("row noise, auto", row_dn, "auto"),
            ("row noise, on", row_dn, "on"),
        ):
            truth = truths[row_noise_dn]
            assert truth.raw_dir is not None
            out = root / name.replace(", ", "_").replace(" ", "_")
            config = PipelineConfig(row_correction=mode, show_progress=False, evaluation=False, generate_set=False)
            result = run_bias_pipeline(truth.raw_dir, out, config=config)
            runs[name] = (result.model, truth, out)
        reference_model = runs["no row noise, auto"][0]
        clean_dark, normal = _dark(base, 0.0, args.seed + 100)
        clean_noise = float(np.std(subtract_bias(clean_dark, reference_model, DARK_TEMPERATURE)[normal]))
        reference_rn = float(np.nanmedian(reference_model.read_noise[normal]))
        print(f"row noise {args.row_noise:g} x the read noise ({row_dn * SCALE:.1f} ADU); frames {tuple(args.shape)}, "
              f"5 temperatures x {args.frames}")  # fmt: skip
        print()
        print("| run | read-noise map (ADU) | ratio | pulls of a (std) | pulls of b (std) | manifest row noise / truth "
              "| dark noise, no correction | dark noise, row_correction=True |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|")
        for name, (model, truth, out) in runs.items():
            read_noise = float(np.nanmedian(model.read_noise[normal]))
            pull_a, pull_b = _pulls(model, truth, normal)
            dark, _ = _dark(base, 0.0 if name.startswith("no") else row_dn, args.seed + 100)
            plain = float(np.std(subtract_bias(dark, model, DARK_TEMPERATURE)[normal]))
            fixed = float(np.std(subtract_bias(dark, model, DARK_TEMPERATURE, row_correction=True)[normal]))
            ratio = _manifest_ratio(out, truth)
            print(
                f"| {name} | {read_noise:.2f} | {read_noise / reference_rn:.3f} | {pull_a:.3f} | {pull_b:.3f} | "
                f"{'' if math.isnan(ratio) else f'{ratio:.3f}'} | {plain:.2f} ({plain / clean_noise:.3f}) | "
                f"{fixed:.2f} ({fixed / clean_noise:.3f}) |"
            )
        print()
        print(f"Dark noise in ADU, in brackets against the dark without row noise minus the model without: "
              f"{clean_noise:.2f} ADU.")  # fmt: skip


if __name__ == "__main__":
    main()
