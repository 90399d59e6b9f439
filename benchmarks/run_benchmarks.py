"""Time bias_pipeline against the read floor, a naive numpy script and ccdproc, on one data set.

Every row runs as its own process (wall time and peak RSS from ``os.wait4``), on the same
simulated files, after one warm-up; rows are interleaved (row A run 1, row B run 1, ..., row A
run 2, ...) so a slow moment of a shared machine hits every row alike; the table reports the
median of the runs and each row's ratio to the floor and to bias_pipeline (without evaluation).

Rows:
  floor          read and decode every frame's pixels with astropy (memory-mapped)
  naive          per group np.stack + np.median(axis=0), then np.linalg.lstsq
  naive+plots    the same plus full-resolution imshow PNGs (real, model, MAE, MAPE per group)
  ccdproc        ccdproc.combine(method='median') per group + the same lstsq (if installed)
  pipeline       bias_pipeline --no-evaluation (scan, masters, fit)
  pipeline+eval  bias_pipeline full run with evaluation and every plot

    python benchmarks/run_benchmarks.py                      # 120 and 480 frames of 2048 x 2048
    python benchmarks/run_benchmarks.py --sizes 120 --runs 3
    python benchmarks/run_benchmarks.py --quick              # small and fast, for CI

Data sets are simulated with bias_pipeline.simulate and cached under --data-dir.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROWS = ("floor", "naive", "naive+plots", "ccdproc", "pipeline", "pipeline+eval")
GROUPS = 8


# ----------------------------------------------------------------------------- the rows
def _frames_by_group(raw: Path) -> dict[str, list[Path]]:
    groups: dict[str, list[Path]] = {}
    for path in sorted(raw.glob("*.fits")):
        groups.setdefault(path.name.split("C_")[0], []).append(path)
    return groups


def _temperature(path: Path) -> float:
    from astropy.io import fits

    return float(fits.getheader(path)["TEMPERATURE"])


def row_floor(raw: Path, out: Path) -> None:
    import numpy as np
    from astropy.io import fits

    total = 0
    for path in sorted(raw.glob("*.fits")):
        # astropy 8 will not scale a memory-mapped image (BZERO); map the stored int16 and
        # undo BZERO = 32768 with one integer operation, which is all decoding takes.
        with fits.open(path, memmap=True, do_not_scale_image_data=True) as hdul:
            pixels = hdul[0].data.view(">u2") ^ np.uint16(0x8000)
            total += int(pixels.max())  # touch every pixel once
            del pixels
    del total


def _naive_masters(raw: Path, out: Path, combine) -> tuple[list[float], list]:
    import numpy as np

    temps, masters = [], []
    for paths in _frames_by_group(raw).values():
        masters.append(combine(paths))
        temps.append(float(np.mean([_temperature(p) for p in paths])))
    return temps, masters


def _lstsq(temps, masters):
    import numpy as np

    design = np.vstack([np.ones(len(temps)), temps]).T
    y = np.stack([m.reshape(-1) for m in masters])
    coefficients, *_ = np.linalg.lstsq(design, y, rcond=None)
    shape = masters[0].shape
    return coefficients[0].reshape(shape), coefficients[1].reshape(shape)


def _numpy_median(paths):
    import numpy as np
    from astropy.io import fits

    return np.median(np.stack([fits.getdata(p).astype(np.float32) for p in paths]), axis=0)


def row_naive(raw: Path, out: Path, plots: bool = False) -> None:
    import numpy as np

    temps, masters = _naive_masters(raw, out, _numpy_median)
    a, b = _lstsq(temps, masters)
    if plots:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        for t, real in zip(temps, masters, strict=True):
            model = a + b * t
            for name, image in (("real", real), ("model", model), ("mae", np.abs(real - model)),
                                ("mape", 100 * np.abs(real - model) / real)):  # fmt: skip
                figure = plt.figure(figsize=(8, 8))
                plt.imshow(image, origin="lower")
                plt.colorbar()
                figure.savefig(out / f"{name}_{t:.1f}.png", dpi=300)
                plt.close(figure)


def row_ccdproc(raw: Path, out: Path) -> None:
    import ccdproc

    def combine(paths):
        return ccdproc.combine([str(p) for p in paths], method="median", unit="adu").data

    temps, masters = _naive_masters(raw, out, combine)
    _lstsq(temps, masters)


def row_pipeline(raw: Path, out: Path, evaluate: bool) -> None:
    from bias_pipeline.cli import run_main

    args = ["--basepath", str(raw), "--output-dir", str(out), "-q"]
    if not evaluate:
        args.append("--no-evaluation")
    code = run_main(args)
    if code:
        raise SystemExit(code)


def run_row(name: str, raw: Path, out: Path) -> None:
    {
        "floor": lambda: row_floor(raw, out),
        "naive": lambda: row_naive(raw, out),
        "naive+plots": lambda: row_naive(raw, out, plots=True),
        "ccdproc": lambda: row_ccdproc(raw, out),
        "pipeline": lambda: row_pipeline(raw, out, evaluate=False),
        "pipeline+eval": lambda: row_pipeline(raw, out, evaluate=True),
    }[name]()


# ----------------------------------------------------------------------------- the driver
def make_data(data_dir: Path, frames: int, shape: tuple[int, int]) -> Path:
    """Simulate (once) ``frames`` frames in 8 temperature groups; return the raw folder."""
    from bias_pipeline.simulate import SimulationSpec, simulate_dataset

    folder = data_dir / f"frames{frames}_{shape[0]}x{shape[1]}"
    raw = folder / "raw"
    if raw.is_dir() and len(list(raw.glob("*.fits"))) == frames:
        return raw
    shutil.rmtree(folder, ignore_errors=True)
    temperatures = tuple(-15.0 + 10.0 * k for k in range(GROUPS))
    spec = SimulationSpec(shape=shape, temperatures=temperatures, frames_per_temperature=frames // GROUPS, seed=1)
    simulate_dataset(folder, spec)
    return raw


def measure(name: str, raw: Path) -> tuple[float, float]:
    """Run one row in a fresh process; return wall seconds and peak RSS in MiB."""
    with tempfile.TemporaryDirectory(prefix="bench_") as out:
        start = time.perf_counter()
        process = subprocess.Popen([sys.executable, __file__, "--_row", name, str(raw), out], stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise RuntimeError(f"row {name} failed with exit code {process.returncode}")
    return wall, usage.ru_maxrss / 1024.0  # Linux reports KiB


def available_rows() -> list[str]:
    rows = list(ROWS)
    try:
        import ccdproc  # noqa: F401
    except ImportError:
        rows.remove("ccdproc")
        print("(ccdproc not installed: its row is skipped; pip install ccdproc to include it)")
    return rows


def benchmark(raw: Path, runs: int, rows: list[str], warmup: bool = True) -> dict[str, tuple[float, float]]:
    for name in rows if warmup else ():  # warm-up: page cache, imports, compiled caches
        measure(name, raw)
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in rows}
    for _ in range(runs):
        for name in rows:
            samples[name].append(measure(name, raw))
    return {
        name: (statistics.median(w for w, _ in values), statistics.median(r for _, r in values))
        for name, values in samples.items()
    }


def print_table(title: str, results: dict[str, tuple[float, float]], megabytes: float) -> None:
    floor = results["floor"][0]
    ours = results["pipeline"][0]
    print(f"\n{title}")
    print("| row | wall (s) | peak RSS (MiB) | raw MB/s | x floor | x bias_pipeline |")
    print("|---|---|---|---|---|---|")
    for name, (wall, rss) in results.items():
        print(f"| {name} | {wall:.2f} | {rss:.0f} | {megabytes / wall:.0f} | {wall / floor:.2f} | {wall / ours:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[120, 480], help="frames per data set")
    parser.add_argument("--shape", type=int, nargs=2, default=(2048, 2048))
    parser.add_argument("--runs", type=int, default=3, help="timed runs per row after the warm-up (median)")
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parent / "data")
    parser.add_argument(
        "--quick", action="store_true", help="24 frames of 128 x 128, one run, no warm-up: checks that it runs"
    )
    parser.add_argument("--rows", nargs="+", choices=ROWS, help="run only these rows (floor and pipeline always run)")
    parser.add_argument("--_row", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._row:
        name, raw, out = args._row
        run_row(name, Path(raw), Path(out))
        return
    if args.quick:
        args.sizes, args.shape, args.runs = [24], (128, 128), 1
    rows = available_rows()
    if args.rows:
        rows = [r for r in rows if r in set(args.rows) | {"floor", "pipeline"}]
    print(f"bias_pipeline benchmark, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}", flush=True)
    for frames in args.sizes:
        raw = make_data(args.data_dir, frames, tuple(args.shape))
        megabytes = sum(p.stat().st_size for p in raw.glob("*.fits")) / 1e6
        title = (
            f"{frames} frames of {args.shape[0]} x {args.shape[1]} in {GROUPS} groups ({megabytes:.0f} MB), "
            f"median of {args.runs}"
        )
        print_table(title, benchmark(raw, args.runs, rows, warmup=not args.quick), megabytes)


if __name__ == "__main__":
    main()
