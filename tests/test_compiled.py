"""The compiled kernels' compile cache and the numpy path: where the cache goes, what happens
when no folder can hold it, and that the numpy reference path gives the same products."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from bias_pipeline import compiled

from conftest import REPO

# A small kernel call: the row-median kernels compile in a couple of seconds.
CALL = (
    "import numpy as np; from bias_pipeline.combine_kernels import nan_median; "
    "print(nan_median(np.array([3, 1, 2], dtype=np.float32)))"
)

pytestmark = pytest.mark.skipif(not compiled.available(), reason="numba not installed")


def run_python(
    code: str, env: dict[str, str], *prefix: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    # cwd matters: ``python -c`` looks in the current folder first
    return subprocess.run(
        [*prefix, sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300, cwd=cwd
    )  # fmt: skip


def test_a_cache_folder_that_cannot_be_made_is_named_and_the_run_goes_on(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    env = {**os.environ, "PYTHONPATH": str(REPO), compiled.CACHE_DIR_VARIABLE: str(blocker / "cache")}
    env.pop("NUMBA_CACHE_DIR", None)
    code = "import logging; logging.basicConfig(); " + CALL
    done = run_python(code, env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "2.0"
    assert f"{compiled.CACHE_DIR_VARIABLE}={blocker / 'cache'} cannot hold the compile cache" in done.stderr


def test_without_any_writable_folder_kernels_compile_uncached(tmp_path):
    """A read-only installation and a read-only home: no cache anywhere, a warning, same result."""
    if os.geteuid() == 0 and not shutil.which("setpriv"):
        pytest.skip("root without setpriv: permissions cannot be made to count")
    package = tmp_path / "site"
    shutil.copytree(REPO / "bias_pipeline", package / "bias_pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    home = tmp_path / "home"
    home.mkdir()
    for folder in (package, home):
        for path in [folder, *folder.rglob("*")]:
            path.chmod(0o555 if path.is_dir() else 0o444)
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", compiled.CACHE_DIR_VARIABLE)},
        "PYTHONPATH": str(package),
        "HOME": str(home),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    prefix = ("setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner") if os.geteuid() == 0 else ()
    try:
        code = "import logging; logging.basicConfig(); import bias_pipeline; print(bias_pipeline.__file__); " + CALL
        done = run_python(code, env, *prefix, cwd=tmp_path)
    finally:
        for folder in (package, home):
            for path in [folder, *folder.rglob("*")]:
                path.chmod(0o755 if path.is_dir() else 0o644)
    assert done.returncode == 0, done.stderr
    where, result = done.stdout.split()
    assert Path(where).is_relative_to(package) and result == "2.0"
    assert "compiled kernels cannot be cached" in done.stderr
    assert compiled.CACHE_DIR_VARIABLE in done.stderr


def test_cache_goes_to_the_folder_the_user_names_even_from_several_threads(tmp_path):
    """The kernels are compiled on first use into the folder named; four threads starting at
    once must all get compiled kernels whose callees are compiled too (the cache is empty:
    everything is compiled here), and a second run loads them."""
    code = (
        "import threading, numpy as np; from bias_pipeline.combine_kernels import nan_median\n"
        "values = np.arange(101, dtype=np.float32); results = []; start = threading.Barrier(4)\n"
        "def work():\n    start.wait(); results.append(nan_median(values))\n"
        "threads = [threading.Thread(target=work) for _ in range(4)]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]; print(results)"
    )
    cache = tmp_path / "kernel cache"
    env = {**os.environ, "PYTHONPATH": str(REPO), compiled.CACHE_DIR_VARIABLE: str(cache)}
    env.pop("NUMBA_CACHE_DIR", None)
    done = run_python(code, env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[50.0, 50.0, 50.0, 50.0]", done.stderr
    assert list(cache.rglob("*.nbi")), "no compiled kernel was cached in the folder given"
    again = run_python(CALL, env)  # the second run loads them
    assert again.returncode == 0 and again.stdout.strip() == "2.0", again.stderr


def test_commands_that_compile_nothing_do_not_import_numba():
    """numba is imported when a kernel first runs, not with the package: inspect, generate-bias,
    a bad option and the dark pipeline's model loading do not pay for it."""
    code = (
        "import sys, bias_pipeline; from bias_pipeline import BiasModel, subtract_bias; "
        "import bias_pipeline.cli, bias_pipeline.main_pipeline, bias_pipeline.frames; print('numba' in sys.modules)"
    )
    done = run_python(code, {**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_engine_variable(monkeypatch):
    monkeypatch.setenv(compiled.ENGINE_VARIABLE, "numpy")
    assert compiled.engine() == "numpy"
    assert "numpy reference path" in compiled.describe_engine()
    monkeypatch.setenv(compiled.ENGINE_VARIABLE, "numba")
    assert compiled.engine() == "numba"
    monkeypatch.setenv(compiled.ENGINE_VARIABLE, "fortran")
    assert compiled.engine() == "numba"


def test_the_numpy_path_makes_the_same_products(sim, tmp_path):
    """The whole run with the kernels and with the numpy reference: masters' medians and counts
    bit for bit, maps and model to float32 rounding."""
    outputs = {}
    for engine in ("numpy", "numba"):
        out = tmp_path / engine
        env = {**os.environ, "PYTHONPATH": str(REPO), compiled.ENGINE_VARIABLE: engine}
        done = subprocess.run(
            [sys.executable, str(REPO / "run_pipeline.py"), "--basepath", str(sim.raw_dir), "--output-dir", str(out),
             "-q", "--no-evaluation", "--combine-method", "median"],
            capture_output=True, text=True, env=env, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        outputs[engine] = out
    masters = sorted(p.relative_to(outputs["numpy"]) for p in outputs["numpy"].rglob("master_bias_*.fits"))
    assert masters
    for name in masters:
        with fits.open(outputs["numpy"] / name) as reference, fits.open(outputs["numba"] / name) as kernel:
            np.testing.assert_array_equal(kernel[0].data, reference[0].data)  # medians
            np.testing.assert_array_equal(kernel["NUSED"].data, reference["NUSED"].data)
            for extension in ("ERR", "NOISE"):
                np.testing.assert_allclose(kernel[extension].data, reference[extension].data, rtol=3e-7)
    for name in ("bias_a_map.fits", "bias_b_map.fits"):
        found = list(Path(outputs["numpy"]).rglob(name))
        assert found
        relative = found[0].relative_to(outputs["numpy"])
        a = fits.getdata(outputs["numpy"] / relative)
        b = fits.getdata(outputs["numba"] / relative)
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-4, equal_nan=True)
