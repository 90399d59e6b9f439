"""Provenance: run_config.json and the header cards that tie a product to its run."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
from astropy.io import fits

from bias_pipeline import PipelineConfig
from bias_pipeline.config import options
from bias_pipeline.provenance import DEPENDENCIES, RUN_CONFIG_NAME


def test_run_config_records_options_versions_and_input_checksums(pipeline_run):
    out = pipeline_run.output_dir
    document = json.loads((out / RUN_CONFIG_NAME).read_text())
    assert set(DEPENDENCIES) | {"bias_pipeline", "python"} <= set(document["software"])
    assert all(document["software"][name] != "not installed" for name in DEPENDENCIES)
    # Exactly the schema's options, paths and switches included (show_progress is how -q drew, not an option).
    assert list(document["options"]) == list(options())
    assert {f.name for f in dataclasses.fields(PipelineConfig)} - set(document["options"]) == {"show_progress"}
    assert document["options"]["basepath"] and document["started"] <= document["finished"]
    assert isinstance(document["command_line"], list) and document["command_line"]
    files = document["inputs"]["files"]
    used = [r for r in pipeline_run.records if r.status == "used"]
    assert document["inputs"]["count"] == len(files) >= len(used) > 0
    raw = document["options"]["basepath"]
    for entry in files[:3]:  # the checksums are those of the files
        data = (Path(raw) / entry["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) == entry["bytes"]
    lines = sorted(f"{e['sha256']}  {e['path']}\n" for e in files)
    digest = hashlib.sha256("".join(lines).encode()).hexdigest()
    assert document["inputs"]["digest_sha256"] == digest
    # Every FITS product carries the digest and the count, so a lone file finds its run.
    for path in sorted(out.rglob("*.fits")):
        header = fits.getheader(path)
        assert header["INPUTSHA"] == digest and header["NINPUTS"] == len(files), path
        assert header["BPVERS"] and header["DATE"]
    manifest = (out / "frames_manifest.csv").read_text().splitlines()
    assert manifest[0].endswith(",sha256")
    assert sum(line.split(",")[-1] in {e["sha256"] for e in files} for line in manifest[1:]) == len(files)


def test_slow_path_in_small_chunks_gives_the_same_masters(monkeypatch):
    import bias_pipeline.combine as combine

    rng = np.random.default_rng(9)
    stack = (rng.normal(900, 2, (9, 20, 30)).round() * 16).astype(np.uint16)
    stack[3] += 400  # a bad frame: every pixel needs the slow path
    whole = combine.combine_sorted(combine.sort_frames(stack.copy()))
    monkeypatch.setattr(combine, "CLIP_CHUNK_VALUES", 50)  # many chunks of a few pixels
    chunked = combine.combine_sorted(combine.sort_frames(stack.copy()))
    for name in ("master", "noise", "error", "n_used"):
        np.testing.assert_array_equal(getattr(chunked, name), getattr(whole, name))
    assert (whole.n_used == 8).mean() > 0.9  # the bad frame is clipped almost everywhere
