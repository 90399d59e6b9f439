"""Step 2: combine each temperature group of accepted frames into a master bias.

The rooms this step uses: :mod:`bias_pipeline.grouping` (which frames form a group),
:mod:`bias_pipeline.block_combine` (frames combined block by block, and the tests that judge a
frame against its group) and :mod:`bias_pipeline.master_writer` (master files under staging
names, then published). This module holds the step itself: :func:`combine_group` combines one
group and decides about its frames, changing none of them; :func:`build_masters` runs it on
every group and writes the masters. It returns a :class:`MasterSet`, the masters and every
per-frame decision, for the chaining code to apply to its records.

The legacy call forms (``group_by_temperature``, ``combine_frames``, ``combine_stack``,
``generate_master_bias_by_temp``) live in :mod:`bias_pipeline.legacy` and are found here too.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..block_combine import (
    MAX_BLOCK_ROWS,
    OFFSET_SIGNIFICANCE,
    WORKING_SET_MB,
    CombineReadError,
    GroupResult,
    block_bytes_per_row,
    block_rows,
    combine_records,
    copied_frames,
    level_offsets,
    offset_frames,
    outlying_frames,
    patterned_frames,
    value_step,
)
from ..cluster import BlockCluster, block_cluster
from ..combine import Combined
from ..config import PipelineConfig
from ..frames import STATUS_USED, FrameDecision, FrameRecord, is_tiny
from ..grouping import (
    MAX_READING_STEP,
    MIN_SETTLED_DISTANCE,
    SETTLED_WIDTHS,
    FrameGroup,
    Grouping,
    grouping_width,
    make_groups,
    reading_step,
    temperature_clusters,
)
from ..lazy import forward
from ..master_writer import (
    MASTER_PATTERN,
    STAGED_SUFFIX,
    Master,
    MasterFrame,
    discard_masters,
    discard_staged_files,
    publish_masters,
    staged_name,
    write_master,
)

#: The legacy call forms, defined in :mod:`bias_pipeline.legacy` and found here by name.
LEGACY_NAMES = ("combine_frames", "combine_stack", "generate_master_bias_by_temp", "group_by_temperature")
__all__ = [  # the step, and the names other code imports from this module
    "MASTER_PATTERN",
    "MAX_BLOCK_ROWS",
    "MAX_READING_STEP",
    "MIN_SETTLED_DISTANCE",
    "OFFSET_SIGNIFICANCE",
    "SETTLED_WIDTHS",
    "STAGED_SUFFIX",
    "WORKING_SET_MB",
    "FrameGroup",
    "GroupOutcome",
    "GroupResult",
    "Grouping",
    "Master",
    "MasterFrame",
    "MasterSet",
    "block_bytes_per_row",
    "block_rows",
    "build_masters",
    "combine_group",
    "combine_records",
    "discard_masters",
    "grouping_width",
    "level_offsets",
    "make_groups",
    "publish_masters",
    "reading_step",
    "staged_name",
    "temperature_clusters",
    "value_step",
    *LEGACY_NAMES,
]

logger = logging.getLogger(__name__)


# PEP 562: the legacy forms are looked up on first use. legacy.py imports this module, so
# importing it here at the top would be an import cycle.
__getattr__ = forward(__name__, LEGACY_NAMES, "bias_pipeline.legacy")


@dataclass(frozen=True)
class MasterSet:
    """What step 2 made: the masters, and what it decided about each frame.

    Attributes
    ----------
    masters
        One per group combined, by increasing temperature.
    decisions
        Path of every frame step 2 decided about (used in a group with its offset, or
        rejected and why) -> the decision; apply them with
        :func:`~bias_pipeline.frames.apply_decisions`.
    """

    masters: list[MasterFrame]
    decisions: dict[Path, FrameDecision] = field(default_factory=dict)


@dataclass(frozen=True)
class GroupOutcome:
    """One group combined (:func:`combine_group`).

    Attributes
    ----------
    group
        The group with the frames finally used.
    combined
        The master and its maps; ``None`` when the group fell below the minimum size.
    decisions
        Path of each frame of the group -> used (with its offset) or rejected.
    """

    group: FrameGroup
    combined: Combined | None
    decisions: dict[Path, FrameDecision]


def combine_group(
    group: FrameGroup,
    config: PipelineConfig,
    input_bits: int = 16,
    on_rows: Callable[[int], None] | None = None,
    cluster: BlockCluster | None = None,
) -> GroupOutcome:
    """Combine a group, rejecting frames that cannot be read, that disagree with the master pixel
    by pixel, that carry a periodic pattern far beyond the noise (pattern noise), whose whole
    level is offset from the rest, or that copy another frame's pixels,
    and combining again without them until none is left to reject. Neither ``group`` nor its
    records are changed.

    Parameters
    ----------
    group
        A group from :func:`make_groups`.
    config
        The run's options.
    input_bits
        The data set's bit depth decided in step 1.
    on_rows
        Called with the number of frame-rows read after each block (progress).
    cluster
        Run the blocks on this Dask cluster (:mod:`bias_pipeline.cluster`); ``None``: local threads.

    Returns
    -------
    GroupOutcome
    """
    members = list(group.records)
    decisions: dict[Path, FrameDecision] = {}
    # The offsets last measured for each frame: a frame rejected keeps those of the pass that
    # rejected it, a used frame those of the last pass.
    measured: dict[Path, tuple[float | None, float | None, float | None]] = {}

    def reject(record: FrameRecord, reason: str) -> None:
        offset, sigma, row_noise = measured.get(record.path, (None, None, None))
        decisions[record.path] = FrameDecision.rejected(
            record, reason, group=group.label, offset=offset, offset_sigma=sigma, row_noise=row_noise
        )

    while len(members) >= config.min_frames_per_group:
        try:
            result = combine_records(
                members,
                config.combine_method,
                input_bits=input_bits,
                scale_factor=config.scale_factor,
                memory_limit=config.memory_limit,
                clip_sigma=config.clip_sigma,
                clip_iters=config.clip_iters,
                outlier_sigma=config.outlier_sigma,
                threads=config.threads,
                on_rows=on_rows,
                row_correction=config.row_correction,
                cluster=cluster,
            )
        except CombineReadError as exc:
            reject(exc.record, f"became unreadable while combining: {exc}")
            members = [r for r in members if r.path != exc.record.path]  # a copy when raised on a cluster worker
            continue
        offsets, sigmas = level_offsets(members, result)
        row_noise = result.row_noise if result.row_noise is not None else [math.nan] * len(members)
        for record, offset, sigma, rows in zip(members, offsets, sigmas, row_noise, strict=True):
            measured[record.path] = (_number_or_none(offset), _number_or_none(sigma), _number_or_none(rows))
        rejected = (
            outlying_frames(members, result, config)
            or patterned_frames(members, result)
            or copied_frames(members, result)
            or offset_frames(group.label, members, offsets, sigmas, result.combined, config)
        )
        if not rejected:
            _log_row_noise(group.label, result, config.row_correction)
            for record in members:
                offset, sigma, rows = measured[record.path]
                decisions[record.path] = FrameDecision(STATUS_USED, "", group.label, offset, sigma, rows)
            return GroupOutcome(FrameGroup(group.label, members), result.combined, decisions)
        for record, reason in rejected:
            reject(record, reason)
        gone = {id(record) for record, _ in rejected}
        members = [r for r in members if id(r) not in gone]
        logger.warning(
            "group %s C: %d frame(s) rejected (%s); combining again", group.label, len(rejected), rejected[0][1]
        )
    for record in members:
        reject(
            record,
            f"its temperature group {group.label} C fell below --min-frames-per-group "
            f"{config.min_frames_per_group} after unusable frames were removed",
        )
    logger.warning("group %s C dropped: too few usable frames", group.label)
    return GroupOutcome(FrameGroup(group.label, members), None, decisions)


def _log_row_noise(label: str, result: GroupResult, mode: str) -> None:
    """One line per group: its frames' row noise, the test against read noise, what was done."""
    if result.row_test is None or result.row_noise is None:
        return
    amplitudes = np.asarray(result.row_noise, dtype=np.float64)
    done = "removed" if result.row_corrected else f"left in (--row-correction {mode})"
    logger.info(
        "group %s C: row noise %.2f ADU a frame (median; %.2f to %.2f), %.1f sigma %s read noise alone: %s",
        label,
        float(np.nanmedian(amplitudes)),
        float(np.nanmin(amplitudes)),
        float(np.nanmax(amplitudes)),
        abs(result.row_test.excess_sigma),
        "beyond" if result.row_test.excess_sigma > 0 else "below",
        done,
    )


def _number_or_none(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def build_masters(
    groups: Grouping | Sequence[FrameGroup],
    masters_dir: str | Path,
    config: PipelineConfig,
    *,
    input_bits: int = 16,
    publish: bool = True,
) -> MasterSet:
    """Combine every group and write ``master_bias_XX.XC.fits``.

    The master file's primary image is the master; extensions ``ERR`` (its standard error),
    ``NOISE`` (the temporal noise of one frame) and ``NUSED`` (frames kept per pixel) follow.
    A frame that cannot be read any more, or that disagrees with its group's master far
    beyond the noise, is rejected and its group combined again without it; a group that
    falls below the minimum size is dropped, and the other groups go on.

    Parameters
    ----------
    groups
        The grouping from :func:`make_groups` (its rejections join the decisions), or groups.
    masters_dir
        Folder for the master files.
    config
        The run's options.
    input_bits
        The data set's bit depth decided in step 1.
    publish
        Give the masters their final names at the end; with ``False`` they stay under hidden
        staging names until :func:`publish_masters` (or :func:`discard_masters`).

    Returns
    -------
    MasterSet
        The masters, by increasing temperature, and the decision about every frame grouped.
    """
    grouping = groups if isinstance(groups, Grouping) else Grouping(list(groups))
    masters_dir = Path(masters_dir)
    masters_dir.mkdir(parents=True, exist_ok=True)
    progress = tqdm(
        total=sum(len(g.records) for g in grouping.groups),
        desc="combining",
        unit="frame",
        unit_scale=True,  # counts whole frames read, in fractions as row blocks come in
        disable=None if config.show_progress else True,
        leave=False,
    )
    # Masters are written under hidden staging names and get their final names together once
    # every group is combined: a run stopped while combining leaves no master under a final
    # name (the staged files are removed here, or by the next run if the process was killed).
    try:
        # One connection (or LocalCluster) for every group of the run; closed, its tasks
        # cancelled, on the way out whatever happens.
        with block_cluster(config.dask_scheduler) as cluster:
            masters, decisions = _combine_all(grouping.groups, masters_dir, config, input_bits, progress, cluster)
    except BaseException:
        discard_staged_files(masters_dir)
        raise
    if publish:
        masters = publish_masters(masters)
    return MasterSet(masters, {**grouping.decisions, **decisions})


def _combine_all(
    groups: Sequence[FrameGroup],
    masters_dir: Path,
    config: PipelineConfig,
    input_bits: int,
    progress: tqdm,
    cluster: BlockCluster | None = None,
) -> tuple[list[MasterFrame], dict[Path, FrameDecision]]:
    masters: list[MasterFrame] = []
    decisions: dict[Path, FrameDecision] = {}
    if groups and is_tiny(groups[0].records[0]):
        rows, columns = groups[0].records[0].shape or (0, 0)
        logger.warning(
            "frames of %d pixels are too few to judge one frame against its group: none is rejected for "
            "disagreeing with its master", rows * columns,
        )  # fmt: skip
    with progress:
        for group in groups:
            height = float((group.records[0].shape or (1, 1))[0])
            outcome = combine_group(
                group, config, input_bits, lambda rows, h=height: progress.update(rows / h), cluster=cluster
            )
            decisions.update(outcome.decisions)
            if outcome.combined is not None:
                masters.append(write_master(outcome.group, outcome.combined, masters_dir, config, input_bits))
            del outcome  # its maps go before the next group's are made: one group's maps at a time
    return masters, decisions
