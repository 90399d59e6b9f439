"""OUT_DIR/report.html: self-contained, with the run's numbers, every image and a working link
to every product; rendered once in headless Chromium where it is installed."""

from __future__ import annotations

import base64
import csv
import html.parser
import os
import shutil
import subprocess
import urllib.parse
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from bias_pipeline import BiasModel
from bias_pipeline.frames import reason_kind
from bias_pipeline.registry import DIAGNOSTIC_PLOTS
from bias_pipeline.report import ReportData, render_report
from bias_pipeline.simulate import SimulationSpec, simulate_dataset

from conftest import run_cli

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class _Page(html.parser.HTMLParser):
    """Collects what the tests look at: images, links, ids, tags, and the text of each table
    and of each element with an id."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.links: list[str] = []
        self.tags: Counter[str] = Counter()
        self.ids: dict[str, str] = {}
        self.tables: dict[str, list[list[str]]] = {}
        self._open_ids: list[tuple[str, int]] = []
        self._depth = 0
        self._table: list[list[str]] | None = None
        self._cell: list[str] | None = None
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {k: v or "" for k, v in attrs}
        self.tags[tag] += 1
        self._depth += 1
        if tag == "img":
            self.images.append(attributes)
        if tag == "a" and "href" in attributes:
            self.links.append(attributes["href"])
        if "id" in attributes:
            self.ids[attributes["id"]] = ""
            self._open_ids.append((attributes["id"], self._depth))
        if tag == "table":
            self._table = self.tables.setdefault(attributes.get("class", ""), [])
        if tag == "tr" and self._table is not None:
            self._table.append([])
        if tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self._table[-1].append("".join(self._cell).strip())
            self._cell = None
        if tag == "table":
            self._table = None
        while self._open_ids and self._open_ids[-1][1] >= self._depth:
            self._open_ids.pop()
        self._depth -= 1

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)
        for name, _ in self._open_ids:
            self.ids[name] += data


def parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real command on simulated frames plus the simulator's broken files."""
    root = tmp_path_factory.mktemp("report")
    spec = SimulationSpec(shape=(48, 64), temperatures=(-5.0, 5.0, 15.0), frames_per_temperature=4, seed=11)
    truth = simulate_dataset(root / "data", spec, faults=True)
    out = root / "out"
    done = run_cli(
        "run_pipeline.py",
        "--basepath",
        str(truth.raw_dir),
        "--output-dir",
        str(out),
        "--hot-pixel-mask",
        str(truth.truth_dir / "hot_pixel_mask.fits"),
        "--generate-set",
        "--save-eval-fits",
        "-q",
    )
    assert done.returncode == 0, done.stderr
    return out


def manifest_rows(out: Path) -> list[dict[str, str]]:
    with (out / "frames_manifest.csv").open(newline="") as stream:
        return list(csv.DictReader(stream))


def test_report_has_the_summary_numbers(faulty_run: Path) -> None:
    page = parse(faulty_run / "report.html")
    rows = manifest_rows(faulty_run)
    status = Counter(r["status"] for r in rows)
    assert status["rejected"] >= 3 and status["ignored"] >= 1  # the simulator's broken files
    assert page.ids["count-files-found"] == str(len(rows))
    assert page.ids["count-frames-used"] == str(status["used"])
    assert page.ids["count-frames-rejected"] == str(status["rejected"])
    assert page.ids["count-files-ignored"] == str(status["ignored"])
    # Rejections counted by reason, each as the manifest has it.
    expected = Counter(reason_kind(r["reason"]) for r in rows if r["status"] == "rejected")
    shown = {reason: int(n) for n, reason, _ in page.tables["rejected-reasons"][1:]}
    for reason, count in expected.items():
        assert shown.get(reason) == count, (reason, shown)
    # Beside each kind, one of the run's own reasons of that kind (numbers and all).
    reasons = {r["reason"] for r in rows if r["status"] == "rejected"}
    for _, kind, example in page.tables["rejected-reasons"][1:]:
        assert example in reasons and reason_kind(example) == kind
    # Groups with their temperatures and frame counts, and the fitted range.
    groups = page.tables["groups"][1:]
    used_by_group = Counter(r["group"] for r in rows if r["status"] == "used")
    assert [(g[0], int(g[3])) for g in groups] == sorted(
        ((label, n) for label, n in used_by_group.items()), key=lambda item: float(item[0])
    )
    temperatures = [float(r["temperature"]) for r in rows if r["status"] == "used"]
    low, high = (float(t) for t in page.ids["temperature-range"].split(" to "))
    group_means = [float(g[1]) for g in groups]
    assert low == pytest.approx(min(group_means), abs=0.005) and high == pytest.approx(max(group_means), abs=0.005)
    assert min(temperatures) <= low <= high <= max(temperatures)
    # The per-temperature error table agrees with evaluation_summary.csv.
    with (faulty_run / "evaluation" / "evaluation_summary.csv").open(newline="") as stream:
        summary = list(csv.DictReader(stream))
    errors = page.tables["errors"][1:]
    assert [e[0] for e in errors] == [s["label"] for s in summary]
    for shown_row, row in zip(errors, summary, strict=True):
        assert float(shown_row[5]) == pytest.approx(float(row["mae_mean"]), rel=1e-3)
        assert float(shown_row[3]) == pytest.approx(float(row["residual_per_error"]), abs=1e-3)
        assert float(shown_row[4]) == pytest.approx(float(row["heldout_residual_per_error"]), abs=1e-3)
    # The verdict, at the top and in the error section, is the one of the CSV's rows.
    from bias_pipeline.evaluation import noise_floor_verdict

    sentence = noise_floor_verdict(summary).sentence
    assert sentence in page.ids["verdict"] and sentence.startswith("The model is")
    assert "".join(page.text).count(sentence) == 2


def test_report_images_are_embedded_pngs(faulty_run: Path) -> None:
    page = parse(faulty_run / "report.html")
    alts = [image["alt"] for image in page.images]
    # a and b maps, the read-noise map, the diagnostics (bias against temperature, the flag map,
    # sigma_b, CHI2 and RMS maps, the profiles), the error summary and the temperature check.
    wanted = (
        "a: bias at 0 deg C",
        "b: slope",
        "read noise",
        "Median bias of each master",
        "Where the flagged pixels are",
        "sigma_b",
        "CHI2",
        "RMS",
        "Row and column profiles",
        "Model error against temperature",
        "Header",
    )
    assert len(page.images) == len(wanted), alts
    for name in wanted:
        assert any(name in alt for alt in alts), (name, alts)
    for image in page.images:
        prefix = "data:image/png;base64,"
        assert image["src"].startswith(prefix)
        png = base64.b64decode(image["src"][len(prefix) :], validate=True)
        assert png.startswith(PNG_SIGNATURE) and len(png) > 5000
    # Self-contained: nothing fetched from anywhere, no script.
    text = (faulty_run / "report.html").read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text
    assert page.tags["script"] == 0 and page.tags["link"] == 0 and page.tags["iframe"] == 0


def test_report_links_every_product_and_only_existing_files(faulty_run: Path) -> None:
    page = parse(faulty_run / "report.html")
    targets = {urllib.parse.unquote(link) for link in page.links}
    for target in targets:
        assert not target.startswith(("/", "file:")), target  # relative: the folder can move
        assert (faulty_run / target).is_file(), target
    products = {
        p.relative_to(faulty_run).as_posix() for p in faulty_run.rglob("*") if p.is_file() and p.name != "report.html"
    }
    assert products - targets == set()
    for expected in (
        "frames_manifest.csv",
        "run_config.json",
        "pipeline.log",
        "bias_model/bias_model.fits",
        "evaluation/evaluation_summary.csv",
        *(f"evaluation/{name}" for name in DIAGNOSTIC_PLOTS),  # step 5's diagnostics as PNGs
    ):
        assert expected in targets


def test_worst_pixels_are_the_largest_residual_rms(faulty_run: Path) -> None:
    page = parse(faulty_run / "report.html")
    model = BiasModel.load(faulty_run)
    worst = page.tables["worst"][1:]
    assert len(worst) == 20
    rms = np.where(model.flagged, -np.inf, model.rms)  # the worst unflagged pixels
    expected = np.sort(rms.ravel())[::-1][:20]
    flagged = int(np.count_nonzero(model.flagged))
    assert flagged > 0 and f"{flagged} flagged or masked pixels are left out" in "".join(page.text)
    shown = [float(row[4]) for row in worst]
    assert shown == pytest.approx(expected.tolist(), rel=1e-3)
    for row in worst:  # row and column index the map the right way round (48 x 64)
        r, c = int(row[0]), int(row[1])
        assert float(row[4]) == pytest.approx(float(model.rms[r, c]), rel=1e-3)


def test_report_without_evaluation_says_so(sim, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = run_cli("run_pipeline.py", "--basepath", str(sim.raw_dir), "--output-dir", str(out), "--no-evaluation", "-q")
    assert done.returncode == 0, done.stderr
    page = parse(out / "report.html")
    assert "The evaluation was not run (--no-evaluation)" in "".join(page.text)
    alts = [image["alt"] for image in page.images]
    # a, b and read noise, and the diagnostics that need no evaluation: no error plots, and no
    # bias against temperature (it takes each master's levels from the evaluation).
    assert len(page.images) == 8, alts
    assert not any("Model error" in alt or "Median bias" in alt for alt in alts), alts
    assert page.ids["count-frames-used"] == str(len(sim.frame_paths))


def test_large_maps_are_shown_downsampled_with_the_factor_stated() -> None:
    rng = np.random.default_rng(0)
    shape = (1030, 700)  # 3x3 blocks bring it under 512 a side
    model = BiasModel.from_maps(rng.normal(3200, 10, shape), rng.normal(3, 0.3, shape), temperature_range=(0, 20))
    page = _Page()
    page.feed(render_report(ReportData(output_dir=Path("/nonexistent"), records=[], groups=[], model=model)))
    captions = [image["alt"] for image in page.images if "map (" in image["alt"]]
    assert len(captions) == 2
    assert all("3 x 3 block means" in caption for caption in captions), captions


def test_a_failed_run_keeps_the_earlier_report_and_says_why_it_stopped(sim, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_cli("run_pipeline.py", "--basepath", str(sim.raw_dir), "--output-dir", str(out), "-q").returncode == 0
    report, log = (out / "report.html").read_bytes(), (out / "pipeline.log").read_bytes()
    one_group = tmp_path / "one"
    one_group.mkdir()
    for path in sim.frame_paths[:5]:
        shutil.copy(path, one_group / path.name)
    failed = run_cli("run_pipeline.py", "--basepath", str(one_group), "--output-dir", str(out), "-q")
    assert failed.returncode != 0
    assert (out / "report.html").read_bytes() == report and (out / "pipeline.log").read_bytes() == log
    stopped = (out / "stopped_run" / "pipeline.log").read_text()
    assert "run stopped: InputDataError" in stopped and "one temperature" in stopped


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.chromium
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium)")
def test_report_renders_in_headless_chromium(faulty_run: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    command = [
        str(CHROMIUM),
        "--headless",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1280,3000",
        f"--screenshot={shot}",
        (faulty_run / "report.html").as_uri(),
    ]
    if os.geteuid() == 0:
        command.insert(1, "--no-sandbox")  # Chromium refuses to sandbox itself as root
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    from matplotlib.image import imread

    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (3000, 1280)
    # The page drew its maps: a good share of strongly coloured pixels (viridis, coolwarm),
    # which text on white never has.
    saturation = pixels.max(axis=2) - pixels.min(axis=2)
    assert np.mean(saturation > 0.3) > 0.05


def test_odd_names_and_a_dangling_link_do_not_stop_the_report(sim, tmp_path: Path) -> None:
    # A raw folder whose name is not UTF-8 (Python holds its byte as a surrogate), and a
    # dangling link that a user left in the output folder.
    raw = tmp_path / b"raw_\xe9t\xe9 #1".decode("utf-8", "surrogateescape")
    shutil.copytree(sim.raw_dir, raw)
    out = tmp_path / "out & <results>"
    out.mkdir()
    (out / "latest").symlink_to(tmp_path / "nowhere")
    done = run_cli("run_pipeline.py", "--basepath", str(raw), "--output-dir", str(out), "--no-evaluation", "-q")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    page = parse(out / "report.html")
    assert page.ids["count-frames-used"] == str(len(sim.frame_paths))
    assert "latest" in {urllib.parse.unquote(link) for link in page.links}
    assert "raw_\ufffdt\ufffd #1" in "".join(page.text)  # shown with replacement characters
    assert "raw_\\udce9t\\udce9 #1" in (out / "pipeline.log").read_text(encoding="utf-8")  # escaped, not lost


def test_a_rerun_without_evaluation_drops_the_earlier_evaluation(tmp_path: Path) -> None:
    from bias_pipeline.steps.step0_create_dirs import create_directories

    evaluation = tmp_path / "evaluation"
    evaluation.mkdir()
    names = ("evaluation_summary.csv", "evaluation_summary.png", "temperature_check.png", "notes.txt")
    for name in names:
        (evaluation / name).write_text("earlier run")
    create_directories(tmp_path)
    assert [p.name for p in evaluation.iterdir()] == ["notes.txt"]  # the user's own file stays


def test_error_figures_are_drawn_from_memory_not_read_back_from_disk(tmp_path: Path) -> None:
    """The summary rows and the checked records are enough: no evaluation PNG exists anywhere,
    and the figures are still there (the report used to read them back from evaluation/)."""
    from bias_pipeline.frames import FrameRecord
    from bias_pipeline.plots import figure_png, summary_figure

    rng = np.random.default_rng(0)
    model = BiasModel.from_maps(rng.normal(3200, 10, (48, 64)), rng.normal(3, 0.3, (48, 64)), temperature_range=(0, 20))
    nan = float("nan")
    rows = [
        {"temperature": t, "label": f"{t:.1f}", "n_frames": 5, "n_flagged": 0, "mae_mean": 1.0 + t / 100,
         "mae_median": 0.9, "mae_p95": 2.0, "mape_mean": 0.03, "mape_p95": 0.07, "heldout_mae_mean": 1.2,
         "heldout_mae_p95": 2.4, "heldout_mape_mean": 0.04, "heldout_mape_p95": 0.08, "mae_per_read_noise": nan,
         "heldout_mae_per_read_noise": nan}
        for t in (0.0, 10.0, 20.0)
    ]  # fmt: skip
    records = [
        FrameRecord(path=tmp_path / f"f{i}.fits", status="used", temperature=t, temperature_est=t + 0.01 * i,
                    temperature_est_err=0.02, flag="temperature_mismatch" if i == 2 else "")
        for i, t in enumerate((0.0, 10.0, 20.0, 20.0))
    ]  # fmt: skip
    data = ReportData(output_dir=tmp_path / "nowhere", records=records, groups=[], model=model, summary=rows,
                      temperature_tolerance=0.5)  # fmt: skip
    page = _Page()
    page.feed(render_report(data))
    figures = {image["alt"]: image["src"] for image in page.images}
    summary = figures["Model error against temperature"]
    assert base64.b64decode(summary.split(",", 1)[1]) == figure_png(summary_figure(rows))  # what step 5 saves
    check = figures["Header temperature against the temperature each frame's bias shows"]
    assert base64.b64decode(check.split(",", 1)[1]).startswith(PNG_SIGNATURE)
    assert not list(tmp_path.rglob("*.png"))


def test_diagnostic_figures_show_what_they_say() -> None:
    """The profiles are the medians of each column and row, the flag map colours each pixel by
    its first flag, and the fitted law's median is that of a + b T over the pixels."""
    from bias_pipeline.plots import bias_temperature_figure, flag_map_figure, profile_figure

    rng = np.random.default_rng(2)
    shape = (40, 60)
    columns = rng.normal(0, 5, shape[1])
    a = 3200 + columns[None, :] + rng.normal(0, 1, shape)
    b = np.full(shape, 3.0) + rng.normal(0, 0.1, shape)
    flagged = np.zeros(shape, dtype=bool)
    flagged[3, 7] = True
    a[3, 7] = 1e6  # a flagged pixel must not show
    figure = profile_figure([("a", a, "ADU"), ("b", b, "ADU / deg C")], flagged)
    column_line = figure.axes[0].lines[0].get_ydata()
    expected = np.nanmedian(np.where(flagged, np.nan, a), axis=0)
    np.testing.assert_allclose(column_line, expected)
    assert np.corrcoef(column_line, columns)[0, 1] > 0.95  # the column pattern shows
    dq = np.zeros(shape, dtype=np.int64)
    dq[5, 5], dq[6, 6], dq[7, 7] = 1, 4, 1 | 4
    image = flag_map_figure(dq, [("HOT_MASK", 1), ("NONLINEAR", 2), ("NOISY", 4)]).axes[0].images[0].get_array()
    assert image[5, 5] == 1 and image[6, 6] == 3 and image[7, 7] == 1 and int(np.count_nonzero(image)) == 3
    temps = [-10.0, 10.0, 30.0]
    levels = [tuple(np.percentile(a + t * b, [5, 50, 95])) for t in temps]
    axes = bias_temperature_figure(temps, levels, a, b, flagged).axes[0]
    law = axes.lines[0]
    grid, median = law.get_xdata(), law.get_ydata()
    valid = ~flagged
    for t, m in zip(grid[::8], median[::8], strict=True):
        assert m == pytest.approx(np.median(a[valid] + t * b[valid]), abs=1e-6)
