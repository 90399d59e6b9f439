"""Time bias_pipeline against the read floor, a naive numpy script and ccdproc, and check the goals.

Every row runs as its own process (wall time and peak RSS from ``os.wait4``), on the same
simulated files, after one warm-up; rows are interleaved (row A run 1, row B run 1, ..., row A
run 2, ...) so a slow moment of a shared machine hits every row alike; the table reports the
median of the runs and each row's ratio to the floor and to bias_pipeline (without evaluation).
After each table, and after the last one for the ratios between sizes, the goals of issue 13 are
checked and printed as met or NOT met with their numbers.

Rows:
  floor                   read and decode every frame's pixels with astropy (memory-mapped)
  naive                   per group np.stack + np.median(axis=0), then np.linalg.lstsq
  naive+plots             the same plus full-resolution imshow PNGs (real, model, MAE, MAPE per group)
  ccdproc                 ccdproc.combine(method='median') per group + the same lstsq (if installed)
  pipeline                bias_pipeline --no-evaluation (scan, masters, fit), compiled kernels cached
  pipeline first run      the same with an empty compile cache: what the first run after an install costs
  pipeline fit-on frames  bias_pipeline --fit-on frames --no-evaluation
  pipeline+eval           bias_pipeline full run with evaluation and every plot
  pipeline dask local:2   bias_pipeline --no-evaluation --dask-scheduler local:2: the combine's blocks on a
                          LocalCluster of 2 worker processes started for the run (if dask.distributed is
                          installed; its RSS is the driver's only, the workers' are not counted)

Every row's process gets BIAS_PIPELINE_CACHE_DIR: the benchmark's own compile cache under
--data-dir (emptied at the start, so the warm-up compiles and the timed runs load the kernels),
or for "pipeline first run" a new empty folder each time (so numba compiles every kernel then).

    python benchmarks/run_benchmarks.py                      # 120 and 480 frames of 2048 x 2048
    python benchmarks/run_benchmarks.py --sizes 120 --runs 3
    python benchmarks/run_benchmarks.py --rows floor naive pipeline pipeline-first-run
    python benchmarks/run_benchmarks.py --quick              # small and fast, for CI

Rows are named as in the table; in --rows, a hyphen or underscore may stand for a space.
Data sets are simulated with bias_pipeline.simulate and cached under --data-dir.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

FIRST_RUN = "pipeline first run"
DASK_ROW = "pipeline dask local:2"
#: bias_pipeline's arguments for each of its rows, besides --basepath, --output-dir and -q.
PIPELINE_ARGS: dict[str, tuple[str, ...]] = {
    "pipeline": ("--no-evaluation",),
    FIRST_RUN: ("--no-evaluation",),
    "pipeline fit-on frames": ("--fit-on", "frames", "--no-evaluation"),
    "pipeline+eval": (),
    DASK_ROW: ("--no-evaluation", "--dask-scheduler", "local:2"),
}
ROWS = ("floor", "naive", "naive+plots", "ccdproc", *PIPELINE_ARGS)
GROUPS = 8
#: The compile-cache variable of bias_pipeline.compiled (CACHE_DIR_VARIABLE), spelled out so that
#: the driver does not import numba.
CACHE_VARIABLE = "BIAS_PIPELINE_CACHE_DIR"
#: Dots per inch of the naive+plots PNGs per 2048 pixels of frame width: 300 at 2048 x 2048.
PLOT_DPI = 300


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
                # 300 dpi at 2048 x 2048 (every pixel drawn), fewer for small data so --quick stays quick
                figure.savefig(out / f"{name}_{t:.1f}.png", dpi=max(30, PLOT_DPI * max(real.shape) // 2048))
                plt.close(figure)


def row_ccdproc(raw: Path, out: Path) -> None:
    import ccdproc

    def combine(paths):
        return ccdproc.combine([str(p) for p in paths], method="median", unit="adu").data

    temps, masters = _naive_masters(raw, out, combine)
    _lstsq(temps, masters)


def row_pipeline(raw: Path, out: Path, name: str) -> None:
    from bias_pipeline.cli import run_main

    code = run_main(["--basepath", str(raw), "--output-dir", str(out), "-q", *PIPELINE_ARGS[name]])
    if code:
        raise SystemExit(code)


def run_row(name: str, raw: Path, out: Path) -> None:
    if name in PIPELINE_ARGS:
        row_pipeline(raw, out, name)
        return
    {
        "floor": lambda: row_floor(raw, out),
        "naive": lambda: row_naive(raw, out),
        "naive+plots": lambda: row_naive(raw, out, plots=True),
        "ccdproc": lambda: row_ccdproc(raw, out),
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


@dataclass(frozen=True)
class Result:
    """One row's medians over the timed runs."""

    wall: float  # seconds
    rss: float  # MiB, the process's peak resident set
    kernels: int  # compiled functions in the row's compile cache after its last run


def _cached_kernels(cache: Path) -> int:
    # numba writes one index file (.nbi) per cached function, whatever its signatures.
    return sum(1 for _ in cache.rglob("*.nbi")) if cache.is_dir() else 0


def measure(name: str, raw: Path, kernel_cache: Path | None) -> tuple[float, float, int]:
    """Run one row in a fresh process; return wall seconds, peak RSS in MiB and cached kernels.

    The process compiles into and loads from ``kernel_cache``, except the first-run row, which
    gets a new empty folder beside it (removed afterwards).
    """
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_"))
        cache = kernel_cache
        if name == FIRST_RUN:
            assert kernel_cache is not None  # --quick leaves the first-run row out
            kernel_cache.parent.mkdir(parents=True, exist_ok=True)
            cache = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="first_run_", dir=kernel_cache.parent)))
        # --quick (CI, after the tests) uses the kernels the tests compiled: numba's own cache
        env = {**os.environ, CACHE_VARIABLE: str(cache)} if cache is not None else dict(os.environ)
        command = [sys.executable, __file__, "--_row", name, str(raw), out]
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        kernels = _cached_kernels(cache) if cache is not None else 0
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise RuntimeError(f"row {name} failed with exit code {process.returncode}")
    # Linux reports KiB; the figure is the largest one process's (forked plot workers share
    # the parent's pages and are not added), the same as /usr/bin/time -v.
    return wall, usage.ru_maxrss / 1024.0, kernels


def available_rows() -> list[str]:
    rows = list(ROWS)
    try:
        import ccdproc  # noqa: F401
    except ImportError:
        rows.remove("ccdproc")
        print("(ccdproc not installed: its row is skipped; pip install ccdproc to include it)")
    if importlib.util.find_spec("distributed") is None:
        rows.remove(DASK_ROW)
        print(f"(dask.distributed not installed: '{DASK_ROW}' is skipped; pip install 'bias_pipeline[dask]')")
    return rows


def benchmark(
    raw: Path, runs: int, rows: list[str], kernel_cache: Path | None, warmup: bool = True
) -> dict[str, Result]:
    for name in rows if warmup else ():  # warm-up: page cache, imports, the compile cache
        measure(name, raw, kernel_cache)
    samples: dict[str, list[tuple[float, float, int]]] = {name: [] for name in rows}
    for _ in range(runs):
        for name in rows:
            samples[name].append(measure(name, raw, kernel_cache))
    return {
        name: Result(
            statistics.median(w for w, _, _ in values),
            statistics.median(r for _, r, _ in values),
            values[-1][2],
        )
        for name, values in samples.items()
    }


def print_table(title: str, results: dict[str, Result], megabytes: float) -> None:
    floor = results["floor"].wall
    ours = results["pipeline"].wall
    print(f"\n{title}")
    print("| row | wall (s) | peak RSS (MiB) | raw MB/s | x floor | x bias_pipeline |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r.wall:.2f} | {r.rss:.0f} | {megabytes / r.wall:.0f} | {r.wall / floor:.2f} "
            f"| {r.wall / ours:.2f} |"
        )


# ----------------------------------------------------------------------------- the goals
#: Issue 13's goals, stated for 120 frames of 2048 x 2048 in 8 groups (ratios within one run).
FLOOR_LIMIT = 2.0  # pipeline <= 2.0 x floor
NAIVE_SPEEDUP = 5.0  # pipeline >= 5 x faster than naive
EVAL_FLOOR_LIMIT = 5.0  # pipeline+eval <= 5.0 x floor
RSS_LIMIT = 256.0  # MiB, pipeline and pipeline+eval, every size
FIT_ON_FRAMES_LIMIT = 1.2  # pipeline fit-on frames <= 1.2 x pipeline
LINEAR_SLACK = 1.05  # wall(largest) / wall(smallest) <= 1.05 x the frame ratio: 4.2 for 480 / 120
RSS_FLATNESS = 0.10  # peak RSS across sizes within 10 % of the smallest
RSS_ROWS = ("pipeline", "pipeline+eval")

Check = tuple[str, str, bool | None]  # goal, measured, met (None: not measured)


def _missing(*names: str) -> str:
    return "not measured (row " + " and ".join(names) + " not run)"


def goal_checks(results: dict[str, Result]) -> list[Check]:
    """The goals one data set shows: speed against the floor and naive, memory, --fit-on frames."""
    checks: list[Check] = []
    ours = results["pipeline"]
    floor = results["floor"]
    ratio = ours.wall / floor.wall
    checks.append(
        (
            f"pipeline <= {FLOOR_LIMIT:g} x floor",
            f"{ratio:.2f} x ({ours.wall:.2f} s / {floor.wall:.2f} s)",
            ratio <= FLOOR_LIMIT,
        )
    )
    goal = f"pipeline >= {NAIVE_SPEEDUP:g} x faster than naive"
    if "naive" in results:
        naive = results["naive"]
        speedup = naive.wall / ours.wall
        checks.append((goal, f"{speedup:.2f} x ({naive.wall:.2f} s / {ours.wall:.2f} s)", speedup >= NAIVE_SPEEDUP))
    else:
        checks.append((goal, _missing("naive"), None))
    goal = f"pipeline+eval <= {EVAL_FLOOR_LIMIT:g} x floor"
    if "pipeline+eval" in results:
        full = results["pipeline+eval"]
        ratio = full.wall / floor.wall
        checks.append((goal, f"{ratio:.2f} x ({full.wall:.2f} s / {floor.wall:.2f} s)", ratio <= EVAL_FLOOR_LIMIT))
    else:
        checks.append((goal, _missing("pipeline+eval"), None))
    for name in RSS_ROWS:
        goal = f"peak RSS of {name} < {RSS_LIMIT:g} MiB"
        if name in results:
            checks.append((goal, f"{results[name].rss:.0f} MiB", results[name].rss < RSS_LIMIT))
        else:
            checks.append((goal, _missing(name), None))
    goal = f"pipeline fit-on frames <= {FIT_ON_FRAMES_LIMIT:g} x pipeline"
    if "pipeline fit-on frames" in results:
        frames = results["pipeline fit-on frames"]
        ratio = frames.wall / ours.wall
        checks.append((goal, f"{ratio:.2f} x ({frames.wall:.2f} s / {ours.wall:.2f} s)", ratio <= FIT_ON_FRAMES_LIMIT))
    else:
        checks.append((goal, _missing("pipeline fit-on frames"), None))
    return checks


def size_checks(by_size: dict[int, dict[str, Result]]) -> list[Check]:
    """The goals between data sets: linear wall time and flat peak RSS from the smallest to the largest."""
    small, large = min(by_size), max(by_size)
    limit = LINEAR_SLACK * large / small
    a, b = by_size[small]["pipeline"].wall, by_size[large]["pipeline"].wall
    checks: list[Check] = [
        (
            f"pipeline wall {large} / {small} frames <= {limit:.2f} ({LINEAR_SLACK:g} x linear)",
            f"{b / a:.2f} ({b:.2f} s / {a:.2f} s)",
            b / a <= limit,
        )
    ]
    sizes = sorted(by_size)
    for name in RSS_ROWS:
        goal = f"peak RSS of {name} flat within {RSS_FLATNESS:.0%} ({', '.join(map(str, sizes))} frames)"
        if all(name in by_size[n] for n in sizes):
            values = [by_size[n][name].rss for n in sizes]
            spread = (max(values) - min(values)) / min(values)
            shown = ", ".join(f"{v:.0f}" for v in values)
            checks.append((goal, f"{shown} MiB: {spread:.1%} apart", spread <= RSS_FLATNESS))
        else:
            checks.append((goal, _missing(name), None))
    return checks


def print_checks(title: str, checks: list[Check]) -> None:
    print(f"\n{title}")
    print("| goal | measured | met? |")
    print("|---|---|---|")
    for goal, measured, met in checks:
        print(f"| {goal} | {measured} | {'-' if met is None else 'met' if met else 'NOT met'} |")


def print_compile_cost(results: dict[str, Result]) -> None:
    """What compiling costs the first run after an install, and how many kernels it compiled."""
    ours = results["pipeline"]
    first = results.get(FIRST_RUN)
    if first is None:
        print(f"\nfirst run after install: {_missing(FIRST_RUN)}")
        return
    print(
        f"\nfirst run after install: {first.wall:.2f} s against {ours.wall:.2f} s with the compile cache: "
        f"compiling costs {first.wall - ours.wall:+.2f} s ({first.kernels} functions compiled in its fresh "
        f"cache folder; {ours.kernels} in the benchmark's cache)"
    )


def _row_name(text: str) -> str:
    """A row named on the command line: as in the table, or with '-' or '_' for its spaces."""

    def key(name: str) -> str:
        return name.lower().replace(" ", "-").replace("_", "-")

    for name in ROWS:
        if key(text) == key(name):
            return name
    raise argparse.ArgumentTypeError(f"unknown row {text!r}; the rows: {', '.join(ROWS)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", help="frames per data set (default: 120 480; --quick: 24)")
    parser.add_argument("--shape", type=int, nargs=2, default=(2048, 2048))
    parser.add_argument("--runs", type=int, default=3, help="timed runs per row after the warm-up (median)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(__file__).resolve().parent / "data",
        help="data sets and the compile cache (kernel_cache/)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="24 frames (or --sizes) of 128 x 128, one run, no warm-up: checks that every row runs",
    )
    parser.add_argument(
        "--rows",
        nargs="+",
        type=_row_name,
        metavar="ROW",
        help=f"run only these rows (floor and pipeline always run); the rows: {', '.join(ROWS)}",
    )
    parser.add_argument("--_row", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._row:
        name, raw, out = args._row
        run_row(name, Path(raw), Path(out))
        return
    if args.quick:
        args.sizes, args.shape, args.runs = args.sizes or [24], (128, 128), 1
    sizes = args.sizes or [120, 480]
    for frames in sizes:
        if frames % GROUPS or frames < 3 * GROUPS:  # the pipeline combines groups of 3 frames or more
            parser.error(f"--sizes {frames}: give a multiple of {GROUPS}, at least {3 * GROUPS}")
    rows = available_rows()
    if args.rows:
        rows = [r for r in rows if r in set(args.rows) | {"floor", "pipeline"}]
    elif args.quick:  # CI: compiling every kernel once more would double the check's time
        rows.remove(FIRST_RUN)
        print(f"(--quick leaves out '{FIRST_RUN}'; name it in --rows to include it)")
    # Emptied so that the warm-up compiles every kernel of this code and the timed runs load them.
    kernel_cache: Path | None = args.data_dir / "kernel_cache"
    if args.quick and not args.rows:
        kernel_cache = None  # CI: compiling every kernel again would double the check's time
    else:
        shutil.rmtree(kernel_cache, ignore_errors=True)
    kernels = os.environ.get("BIAS_PIPELINE_KERNELS", "").strip() or "numba"
    if kernels == "numba" and importlib.util.find_spec("numba") is None:  # found without importing it
        kernels = "numpy (numba is not installed)"
    print(f"bias_pipeline benchmark, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')}, kernels: {kernels}")
    print("command: python benchmarks/run_benchmarks.py " + shlex.join(sys.argv[1:]), flush=True)
    began = time.perf_counter()
    by_size: dict[int, dict[str, Result]] = {}
    for frames in sizes:
        raw = make_data(args.data_dir, frames, tuple(args.shape))
        megabytes = sum(p.stat().st_size for p in raw.glob("*.fits")) / 1e6
        title = (
            f"{frames} frames of {args.shape[0]} x {args.shape[1]} in {GROUPS} groups ({megabytes:.0f} MB), "
            f"median of {args.runs}"
        )
        results = by_size[frames] = benchmark(raw, args.runs, rows, kernel_cache, warmup=not args.quick)
        print_table(title, results, megabytes)
        full_frames = tuple(args.shape) == (2048, 2048)
        note = " (the goals are stated for 120 frames of 2048 x 2048: indicative here)"
        if full_frames and frames == 120:
            note = ""
        elif full_frames and frames == 480:
            note = " (the speed goals are stated for 120 frames, the memory goals for 120 and 480)"
        print_checks(f"Goals of issue 13 at {frames} frames{note}", goal_checks(results))
        print_compile_cost(results)
        sys.stdout.flush()
    if len(by_size) > 1:
        print_checks(f"Goals of issue 13 between sizes ({min(by_size)} to {max(by_size)} frames)", size_checks(by_size))
    print(f"\n(the benchmark took {time.perf_counter() - began:.0f} s)")


if __name__ == "__main__":
    main()
