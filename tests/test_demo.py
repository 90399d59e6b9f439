"""The README's first command: the demo runs end to end and recovers the truth."""

from __future__ import annotations

import re

from conftest import run_cli


def test_demo_runs_and_recovers_the_slope(tmp_path):
    done = run_cli("run_pipeline.py", "--demo", "--output-dir", str(tmp_path / "demo"))  # -q would hide the summary
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "80 frames used in 5 masters" in done.stdout
    assert "3 rejected, 1 ignored" in done.stdout
    found = re.search(r"slope b is off by ([\d.]+) ADU/deg C rms \(the noise allows about ([\d.]+)", done.stdout)
    assert found, done.stdout
    measured, allowed = map(float, found.groups())
    assert 0.8 * allowed < measured < 1.2 * allowed
    manifest = (tmp_path / "demo" / "frames_manifest.csv").read_text()
    assert 'bias_cut_short.fits,rejected,"truncated: file has' in manifest
    assert "observing_notes.txt,ignored" in manifest
    assert (tmp_path / "demo" / "evaluation" / "evaluation_summary.png").is_file()
