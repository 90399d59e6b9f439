"""Step 4: synthetic bias frames from the model at any temperature."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import InputDataError
from ..lazy import forward
from ..model import BiasModel
from ..products import date_cards, product_header, temperature_label, unique_labels, write_image
from ..registry import MODEL_DIR, MODEL_FILE_NAME, SYNTHETIC, labelled_name
from ..units import DEFAULT_SCALE_FACTOR, quantise_to_adc

logger = logging.getLogger(__name__)

#: The legacy call forms, defined in :mod:`bias_pipeline.legacy` and found here by name (PEP 562:
#: legacy.py imports this module, so importing it here at the top would be an import cycle).
LEGACY_NAMES = ("generate_multiple_synthetic_biases",)
__getattr__ = forward(__name__, LEGACY_NAMES, "bias_pipeline.legacy")
__all__ = [
    "ABSOLUTE_ZERO",
    "ADU_RANGE",
    "NAME_DECIMALS",
    "SYNTHETIC_PATTERN",
    "add_read_noise",
    "check_synthetic",
    "generate_synthetic_bias",
    "synthetic_header",
    "synthetic_name",
    "write_synthetic",
    "write_synthetic_set",
    *LEGACY_NAMES,
]

SYNTHETIC_PATTERN = labelled_name(SYNTHETIC, "{label}")  # older callers format it


def generate_synthetic_bias(
    a_map: np.ndarray,
    b_map: np.ndarray,
    temperature: float,
    *,
    temperature_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """Model bias frame ``a + b * T`` at ``temperature`` [deg C], float32 16-bit ADU.

    Parameters
    ----------
    a_map, b_map
        Intercept at 0 deg C and slope per deg C.
    temperature
        Sensor temperature [deg C].
    temperature_range
        Fitted range; a temperature outside it is logged as a warning (extrapolation).

    Returns
    -------
    numpy.ndarray

    Examples
    --------
    >>> generate_synthetic_bias(np.array([[100.0]]), np.array([[2.0]]), 5.0).tolist()
    [[110.0]]
    """
    model = BiasModel.from_maps(a_map, b_map, temperature_range=temperature_range)
    return model.predict(float(temperature))


def synthetic_header(model: BiasModel, temperature: float, extra: dict[str, object] | None = None):
    """Header of a synthetic frame: what it is, its temperature and the model's range (of
    temperatures, and of dates: ``DATE-BEG``, ``DATE-END``)."""
    cards: dict[str, object] = {
        "TEMPERATURE": (float(temperature), "[deg C] temperature the frame is modelled at"),
        "NMASKED": (int(model.mask.sum()), "pixels without a model (NaN)"),
    }
    if model.temperature_range is not None:
        low, high = model.temperature_range
        cards["TMIN"] = (low, "[deg C] lowest temperature of the fit")
        cards["TMAX"] = (high, "[deg C] highest temperature of the fit")
        cards["EXTRAPOL"] = (bool(temperature < low or temperature > high), "outside the fit range")
    cards["MODEL"] = (model.law, "T in deg C")
    cards["DEGREE"] = (model.degree, "polynomial degree in temperature")
    cards.update(date_cards(model.date_range, "the frames behind the model"))
    cards.update(extra or {})
    return product_header(
        "SYNTHETIC_BIAS",
        f"synthetic bias from the model {model.law}",
        scale_factor=model.scale_factor,
        cards=cards,
    )


ABSOLUTE_ZERO = -273.15  # deg C
ADU_RANGE = (0.0, 65535.0)  # what a 16-bit camera's bias can be


def check_synthetic(model: BiasModel, temperature: float, frame: np.ndarray) -> None:
    """Refuse a synthetic frame no camera could give: a temperature below absolute zero, values
    beyond float32 (a temperature far beyond the fit), a median outside 0..65535 ADU, or maps
    whose slope exceeds their level (an a-map and a b-map given the wrong way round).

    Raises
    ------
    InputDataError
        Saying what is wrong and what to give.
    """
    if temperature < ABSOLUTE_ZERO:
        raise InputDataError(f"--temperature {temperature:g} deg C is below absolute zero; give deg C")
    fitted = ~model.mask
    where = (
        f"the model is fitted over {model.temperature_range[0]:g}..{model.temperature_range[1]:g} deg C"
        if model.temperature_range is not None
        else "the model's fitted range is not recorded"
    )
    if not np.all(np.isfinite(frame[fitted])):
        raise InputDataError(
            f"--temperature {temperature:g} deg C gives values beyond what a float32 frame holds (infinite); {where}"
        )
    level = float(np.median(np.abs(model.a_map[fitted]))) if fitted.any() else 0.0
    slope = float(np.median(np.abs(model.b_map[fitted]))) if fitted.any() else 0.0
    if slope > level:
        raise InputDataError(
            f"the b-map's values (median |b| {slope:.4g}) exceed the a-map's (median |a| {level:.4g}): an a-map holds "
            "the bias level (hundreds to thousands of ADU), a b-map its change per deg C (a few ADU); are they swapped?"
        )
    median = float(np.median(frame[fitted])) if fitted.any() else 0.0
    if not ADU_RANGE[0] <= median <= ADU_RANGE[1]:
        raise InputDataError(
            f"at {temperature:g} deg C the frame's median would be {median:.6g} ADU, outside the 16-bit range "
            f"{ADU_RANGE[0]:g}..{ADU_RANGE[1]:g}; {where}"
        )


def write_synthetic(
    model: BiasModel,
    temperature: float,
    path: str | Path,
    *,
    noise_seed: int | None = None,
    noise: bool = False,
) -> tuple[Path, np.ndarray]:
    """Predict the bias at ``temperature`` and write it to ``path``.

    Parameters
    ----------
    model
        The model.
    temperature
        [deg C].
    path
        The file to write.
    noise
        Add the model's read noise and 12-bit quantisation (a raw-like frame); needs
        ``model.read_noise``.
    noise_seed
        Seed of the noise (``None``: a fresh one each call).

    Returns
    -------
    path, frame

    Raises
    ------
    InputDataError
        When ``noise`` is asked of a model without a read-noise map.
    """
    frame = model.predict(float(temperature))
    check_synthetic(model, float(temperature), frame)
    extra: dict[str, object] = {}
    if noise:
        if model.read_noise is None:
            raise InputDataError(
                f"--noise needs the read-noise map of {MODEL_DIR}/{MODEL_FILE_NAME}; give --noise-map or "
                "the maps of a pipeline run"
            )
        frame = add_read_noise(
            frame, model.read_noise, np.random.default_rng(noise_seed), scale_factor=model.scale_factor
        )
        extra["NOISE"] = (True, "read noise and 12-bit quantisation added")
        extra["NOISSEED"] = (-1 if noise_seed is None else int(noise_seed), "seed of the noise (-1: none)")
    return write_image(path, frame, synthetic_header(model, temperature, extra)), frame


def write_synthetic_set(
    model: BiasModel,
    temperatures: Sequence[float],
    output_dir: str | Path,
    labels: Sequence[str] | None = None,
) -> list[Path]:
    """Write ``synthetic_bias_XX.XC.fits`` for each temperature into ``output_dir``.

    Parameters
    ----------
    model
        The fitted model.
    temperatures
        Temperatures [deg C].
    output_dir
        Folder (created if missing).
    labels
        Temperature labels for the names (default: one decimal, more where two collide).

    Returns
    -------
    list of pathlib.Path
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    labels = list(labels) if labels is not None else unique_labels(temperatures)
    paths = []
    for temperature, label in zip(temperatures, labels, strict=True):
        path, _ = write_synthetic(model, temperature, output_dir / labelled_name(SYNTHETIC, label))
        paths.append(path)
    logger.debug("wrote %d synthetic frames in %s", len(paths), output_dir)
    return paths


def add_read_noise(
    frame: np.ndarray,
    read_noise: np.ndarray,
    rng: np.random.Generator,
    *,
    scale_factor: float = DEFAULT_SCALE_FACTOR,
) -> np.ndarray:
    """A raw-like frame: ``frame`` plus Gaussian read noise, quantised to 12-bit steps.

    Parameters
    ----------
    frame
        Model bias [16-bit ADU].
    read_noise
        Per-pixel read noise of one frame [16-bit ADU] (the model's ``READNOISE``).
    rng
        Random generator (seeded for reproducible frames).
    scale_factor
        Size of one 12-bit step in 16-bit ADU; values are clipped to 0..4095 steps.

    Returns
    -------
    numpy.ndarray
        float32; NaN where ``frame`` or ``read_noise`` is NaN.

    Examples
    --------
    >>> out = add_read_noise(np.full((2, 2), 3200.0), np.full((2, 2), 32.0), np.random.default_rng(1))
    >>> bool(np.all(out % 16 == 0)), out.dtype.name
    (True, 'float32')
    """
    noisy = frame.astype(np.float64) + rng.normal(0.0, 1.0, frame.shape) * read_noise
    return quantise_to_adc(noisy, scale_factor)


NAME_DECIMALS = 4  # a temperature in a file name: as many decimals as it has, up to this many


def synthetic_name(temperature: float) -> str:
    """File name of a synthetic frame: one decimal, more when the temperature has them (so
    -0.04 and 0.0 deg C get names of their own), up to :data:`NAME_DECIMALS`.

    >>> synthetic_name(12.0), synthetic_name(-0.04), synthetic_name(-0.0), synthetic_name(1e-320)
    ('synthetic_bias_12.0C.fits', 'synthetic_bias_-0.04C.fits', 'synthetic_bias_0.0C.fits', 'synthetic_bias_0.0C.fits')
    """
    decimals = next(
        (d for d in range(1, NAME_DECIMALS) if abs(round(temperature, d) - temperature) < 0.5 * 10.0**-NAME_DECIMALS),
        NAME_DECIMALS,
    )
    return labelled_name(SYNTHETIC, temperature_label(temperature, decimals))
