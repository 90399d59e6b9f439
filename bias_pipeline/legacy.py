"""The call forms other PhotSat code has used since the first version (design.md, "Names other
PhotSat code already calls"), on top of the real path of each step.

They stay importable from the step modules too (``from
bias_pipeline.steps.step2_generate_master_bias_by_temp import generate_master_bias_by_temp``),
which look them up here by name on first use. New code calls the steps' own functions:
:func:`~bias_pipeline.steps.step0_create_dirs.make_output_folder` (a run stages its products, see
:mod:`bias_pipeline.output_folder`), :func:`~bias_pipeline.steps.step1_load_data.scan_frames`,
:func:`~bias_pipeline.grouping.make_groups` and
:func:`~bias_pipeline.steps.step2_generate_master_bias_by_temp.build_masters`,
:func:`~bias_pipeline.steps.step3_fit_bias_model.fit_model` and
:meth:`~bias_pipeline.model.BiasModel.save`,
:func:`~bias_pipeline.steps.step4_generate_synthetic_bias.write_synthetic_set`,
:func:`~bias_pipeline.steps.step5_evaluate_model.evaluate`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .block_combine import combine_records
from .combine import COMBINE_METHODS, combine_block
from .config import PipelineConfig
from .errors import InputDataError
from .evaluation import evaluate_masters, write_evaluation
from .fitting import fit_polynomial
from .frames import STATUS_ACCEPTED, FrameRecord
from .grouping import clusters, make_groups
from .model import BiasModel
from .output_folder import remove_temporary_files
from .products import unique_labels
from .registry import SUBDIRS, is_product
from .steps.step0_create_dirs import make_output_folder
from .steps.step1_load_data import scan_frames
from .steps.step2_generate_master_bias_by_temp import build_masters
from .steps.step3_fit_bias_model import check_mask
from .steps.step4_generate_synthetic_bias import write_synthetic_set

logger = logging.getLogger(__name__)

# ---- step 0 ------------------------------------------------------------------------------


def create_directories(output_dir: str | Path, *, clear_old_products: bool = True) -> dict[str, Path]:
    """Create ``output_dir`` and its product folders, checking they are writable.

    Parameters
    ----------
    output_dir
        The output folder (created with its parents if missing).
    clear_old_products
        Remove the products an earlier run left (per-temperature files such as
        ``master_bias_XX.XC.fits``, the model files and ``run_config.json``); nothing else is
        touched. Temporary files of a killed run (names ending in
        :data:`~bias_pipeline.products.TEMPORARY_SUFFIX`) are always removed.

    Returns
    -------
    dict
        ``{"root": output_dir, "masters": ..., "model": ..., "synthetic": ..., "evaluation": ...}``.

    Raises
    ------
    OutputError
        When a folder cannot be created or written; raised before any work is done.
    """
    root = Path(output_dir)
    dirs = {"root": root, **{key: root / name for key, name in SUBDIRS.items()}}
    for path in dirs.values():
        make_output_folder(path)
    for path in dirs.values():
        remove_temporary_files(path)
    if clear_old_products:
        for path in dirs.values():
            for old in path.iterdir():
                if old.is_file() and is_product(old.relative_to(root)):
                    old.unlink()
                    logger.debug("removed earlier product %s", old)
    return dirs


# ---- step 1 ------------------------------------------------------------------------------


def load_bias_files(base_path: str | Path, config: PipelineConfig | None = None) -> list[FrameRecord]:
    """Scan ``base_path`` and return the frames accepted as bias frames.

    Parameters
    ----------
    base_path
        The raw folder.
    config
        The run's options (defaults if ``None``).

    Returns
    -------
    list of FrameRecord
        Accepted frames; see :func:`~bias_pipeline.steps.step1_load_data.scan_frames` for every file with its reason.
    """
    records, _ = scan_frames(base_path, config)
    return [r for r in records if r.status == STATUS_ACCEPTED]


# ---- step 2 ------------------------------------------------------------------------------


def _entry_temperature(entry: object) -> float:
    if isinstance(entry, FrameRecord):
        value = entry.temperature
    elif isinstance(entry, Mapping):
        value = entry.get("temperature")
    else:
        value = getattr(entry, "temperature", None)
    if value is None:
        raise InputDataError(f"frame {entry!r} has no temperature")
    return float(value)


def group_by_temperature(
    entries: Iterable[object], round_decimals: int = 1, *, bin_width: float | None = None
) -> dict[float, list]:
    """Group frames by temperature (see :func:`~bias_pipeline.grouping.temperature_clusters`).

    Parameters
    ----------
    entries
        :class:`~bias_pipeline.frames.FrameRecord` objects, or mappings/objects with a
        ``temperature``.
    round_decimals
        Group width ``10 ** -round_decimals`` deg C when ``bin_width`` is not given.
    bin_width
        Group width [deg C].

    Returns
    -------
    dict
        Mean temperature of the group, rounded to one decimal (more where two groups would
        collide) -> its entries, by increasing temperature.

    Examples
    --------
    >>> group_by_temperature([{"temperature": 4.97}, {"temperature": 5.02}, {"temperature": -1.0}])
    {-1.0: [{'temperature': -1.0}], 5.0: [{'temperature': 4.97}, {'temperature': 5.02}]}
    """
    width = bin_width if bin_width is not None else 10.0 ** (-round_decimals)
    entries = list(entries)
    if not entries:
        return {}
    temps = [_entry_temperature(e) for e in entries]
    paired = clusters(list(zip(entries, temps, strict=True)), temps, width)
    means = [float(np.mean([t for _, t in group])) for group in paired]
    keys = [float(label) for label in unique_labels(means)]
    return dict(zip(keys, [[e for e, _ in group] for group in paired], strict=True))


def combine_stack(stack: np.ndarray, method: str = "median") -> np.ndarray:
    """Combine a stack of frames along axis 0 into a float32 master.

    >>> combine_stack(np.array([[[1.0]], [[2.0]], [[9.0]]])).tolist()
    [[2.0]]
    >>> combine_stack(np.array([[[1.0]], [[2.0]], [[9.0]]]), "mean").tolist()
    [[4.0]]
    """
    if method not in COMBINE_METHODS:
        raise InputDataError(f"unknown combine method {method!r}; use {', '.join(COMBINE_METHODS)}")
    return combine_block(stack, method).master


def combine_frames(entries: Sequence[object], method: str = "median") -> np.ndarray:
    """Combine frames into a master.

    Parameters
    ----------
    entries
        Either :class:`~bias_pipeline.frames.FrameRecord` objects (read from disk block by
        block, values as stored) or 2-D arrays of one shape.
    method
        One of :data:`~bias_pipeline.combine.COMBINE_METHODS`.

    Returns
    -------
    numpy.ndarray
        float32 master.
    """
    entries = list(entries)
    records = [e for e in entries if isinstance(e, FrameRecord)]
    if records and len(records) == len(entries):
        return combine_records(records, method).combined.master
    return combine_stack(np.stack([np.asarray(e, dtype=np.float32) for e in entries]), method)


def generate_master_bias_by_temp(
    entries: Sequence[FrameRecord],
    output_dir: str | Path,
    method: str = "median",
    *,
    config: PipelineConfig | None = None,
) -> dict[float, np.ndarray]:
    """Group frames, combine each group and write the masters into ``output_dir``.

    Parameters
    ----------
    entries
        Accepted frames (from :func:`~bias_pipeline.steps.step1_load_data.load_bias_files`).
    output_dir
        Folder for ``master_bias_XX.XC.fits``.
    method
        ``"median"`` or ``"mean"``; overrides ``config.combine_method``.
    config
        Further options (defaults if ``None``).

    Returns
    -------
    dict
        Group temperature (mean of its frames, deg C) -> master array.

    Notes
    -----
    ``entries`` are left as they are (the first version marked each frame used or rejected in
    place); which frames each master used, and why others were rejected, are the decisions
    :func:`~bias_pipeline.steps.step2_generate_master_bias_by_temp.build_masters` returns.
    """
    base = config or PipelineConfig()
    config = PipelineConfig(**{**base.as_dict(), "combine_method": method})
    made = build_masters(make_groups(list(entries), config), output_dir, config)
    return {m.temperature: m.load() for m in made.masters}


# ---- step 3 ------------------------------------------------------------------------------


def fit_linear(
    temperatures: Sequence[float],
    weights: Sequence[float],
    load: Callable[[int], np.ndarray],
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted per-pixel linear fit over frames read one at a time.

    Parameters
    ----------
    temperatures
        Temperature of each frame [deg C]; at least two distinct values.
    weights
        Weight of each frame (> 0).
    load
        ``load(k)`` returns frame ``k`` as a 2-D array.
    mask
        True where a pixel is left out (NaN in the result).

    Returns
    -------
    a_map, b_map
        float32 intercept at 0 deg C and slope per deg C.

    Raises
    ------
    InputDataError
        With fewer than two distinct temperatures.

    Examples
    --------
    >>> frames = [np.full((1, 2), 100.0 + 2.0 * t) for t in (0.0, 10.0, 20.0)]
    >>> a, b = fit_linear([0.0, 10.0, 20.0], [1, 1, 1], frames.__getitem__)
    >>> a.tolist(), b.tolist()
    ([[100.0, 100.0]], [[2.0, 2.0]])
    """
    fit = fit_polynomial(temperatures, weights, load, degree=1)
    a_map, b_map = (c.astype(np.float32) for c in fit.coefficients)
    if mask is not None:
        a_map[mask] = np.nan
        b_map[mask] = np.nan
    return a_map, b_map


def fit_bias_model(
    master_bias_dict: Mapping[float, np.ndarray],
    hot_pixel_mask: np.ndarray | None = None,
    *,
    frames_per_master: Mapping[float, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Fit ``a`` and ``b`` maps to a dict of masters.

    Parameters
    ----------
    master_bias_dict
        Temperature [deg C] -> master array.
    hot_pixel_mask
        Non-zero where a pixel is left out (NaN in both maps).
    frames_per_master
        Temperature -> number of frames, used as weights; equal weights when ``None``.

    Returns
    -------
    a_map, b_map
        float32 arrays: bias at 0 deg C and slope per deg C.

    Raises
    ------
    InputDataError
        With fewer than two distinct temperatures or a mask of another shape.
    """
    temps = sorted(master_bias_dict)
    if not temps:
        raise InputDataError("no masters to fit")
    shape = np.shape(master_bias_dict[temps[0]])
    mask = None if hot_pixel_mask is None else check_mask(hot_pixel_mask, shape)
    weights = [1 if frames_per_master is None else frames_per_master[t] for t in temps]
    return fit_linear(temps, weights, lambda k: master_bias_dict[temps[k]], mask)


def save_bias_model(a_map: np.ndarray, b_map: np.ndarray, output_dir: str | Path) -> tuple[Path, Path]:
    """Write ``bias_a_map.fits`` and ``bias_b_map.fits`` into ``output_dir``.

    Returns
    -------
    a_path, b_path
    """
    return BiasModel.from_maps(a_map, b_map).save(output_dir)


# ---- step 4 ------------------------------------------------------------------------------


def generate_multiple_synthetic_biases(
    a_map: np.ndarray,
    b_map: np.ndarray,
    temperatures: Iterable[float],
    output_dir: str | Path,
) -> dict[float, Path]:
    """Write a synthetic frame for each temperature into ``output_dir``.

    Returns
    -------
    dict
        Temperature -> file written.
    """
    temps = [float(t) for t in temperatures]
    paths = write_synthetic_set(BiasModel.from_maps(a_map, b_map), temps, output_dir)
    return dict(zip(temps, paths, strict=True))


# ---- step 5 ------------------------------------------------------------------------------


@dataclass
class _InMemoryMaster:
    """A master given as an array (the legacy dict form), with what step 5 reads of a master."""

    label: str
    temperature: float
    data: np.ndarray
    n_frames: int

    def load(self) -> np.ndarray:
        """The master's pixels as float32."""
        return np.asarray(self.data, dtype=np.float32)


def evaluate_model(
    a_map: np.ndarray,
    b_map: np.ndarray,
    master_bias_dict: Mapping[float, np.ndarray],
    output_dir: str | Path,
    save_fits: bool = False,
    *,
    frames_per_master: Mapping[float, int] | None = None,
) -> list[dict[str, object]]:
    """Evaluate ``a + b*T`` against masters given as a dict and write into ``output_dir``.

    Parameters
    ----------
    a_map, b_map
        The model maps.
    master_bias_dict
        Temperature [deg C] -> master array.
    output_dir
        The evaluation folder.
    save_fits
        Also write the synthetic, MAE and MAPE FITS.
    frames_per_master
        Temperature -> frames in the master (for titles and the CSV); 0 when unknown.

    Returns
    -------
    list of dict
        One summary row per temperature.
    """
    temps = sorted(master_bias_dict)
    labels = unique_labels(temps)
    masters = [
        _InMemoryMaster(label, t, master_bias_dict[t], (frames_per_master or {}).get(t, 0))
        for label, t in zip(labels, temps, strict=True)
    ]
    model = BiasModel.from_maps(a_map, b_map, temperature_range=(temps[0], temps[-1]) if temps else None)
    return write_evaluation(
        evaluate_masters(model, masters), output_dir, scale_factor=model.scale_factor, save_fits=save_fits,
        total=len(masters),
    )  # fmt: skip
