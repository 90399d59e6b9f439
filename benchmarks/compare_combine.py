"""Which combine method gives the master closest to the truth, at equal frames?

Simulates groups of PhotSat-like frames (read noise 2 DN, 12-bit quantisation, cosmic rays)
with the package's simulator, combines each with every method and prints, as a Markdown table,
the rms error of the master against the true bias over normal pixels (hot, noisy and stuck
pixels left out), in ADU and relative to the ideal sigma / sqrt(n) of a plain mean of
Gaussian noise.

    python benchmarks/compare_combine.py [--shape 256 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from bias_pipeline.combine import COMBINE_METHODS, combine_block
from bias_pipeline.simulate import SCALE, SimulationSpec, make_frame, make_truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=2, default=(256, 256))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print("| frames | cosmic rays / pixel / frame | " + " | ".join(COMBINE_METHODS) + " |")
    print("|---|---|" + "---|" * len(COMBINE_METHODS))
    for cosmic_rate in (1e-4, 2e-3):
        for n_frames in (5, 10, 20, 40):
            errors: dict[str, list[float]] = {m: [] for m in COMBINE_METHODS}
            for repeat in range(args.repeats):
                spec = SimulationSpec(shape=tuple(args.shape), cosmic_rate=cosmic_rate, seed=repeat)
                rng = np.random.default_rng(1000 * n_frames + repeat)
                population = make_truth(spec, rng)
                normal = ~(population.hot_mask | population.dead_mask | (population.noise_factor > 1))
                stack = np.stack([make_frame(population, 0.0, spec, rng) for _ in range(n_frames)]).astype(np.float32)
                for method in COMBINE_METHODS:
                    master = combine_block(stack, method).master
                    errors[method].append(float(np.sqrt(np.mean((master - population.a_map)[normal] ** 2))))
            ideal = math.hypot(spec.read_noise_dn * SCALE, SCALE / math.sqrt(12)) / math.sqrt(n_frames)
            cells = [f"{np.median(errors[m]):.2f} ADU ({np.median(errors[m]) / ideal:.2f})" for m in COMBINE_METHODS]
            print(f"| {n_frames} | {cosmic_rate:g} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
