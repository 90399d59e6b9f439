"""The per-pixel linear bias model ``bias(T) = a + b * T`` and its files.

This is the only module that reads or writes model files. ``bias_a_map.fits`` holds ``a``
(the bias at 0 deg C, 16-bit ADU) and ``bias_b_map.fits`` holds ``b`` (ADU per deg C). Pixels
left out of the fit (the hot-pixel mask) hold NaN in both maps, so a synthetic frame says
"no model here" at those pixels instead of inventing a value; the a-map file also carries the
mask as a ``MASK`` extension and the fitted groups as a ``GROUPS`` table.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from .errors import InputDataError
from .products import product_header, read_image, write_image

logger = logging.getLogger(__name__)

A_MAP_NAME = "bias_a_map.fits"
B_MAP_NAME = "bias_b_map.fits"
MODEL_DIR_NAME = "bias_model"


@dataclass
class BiasModel:
    """Per-pixel linear bias model.

    Attributes
    ----------
    a_map
        Bias at 0 deg C [16-bit ADU], float32, NaN where ``mask`` is True.
    b_map
        Slope [16-bit ADU per deg C], float32, NaN where ``mask`` is True.
    mask
        True where a pixel was left out of the fit (hot-pixel mask).
    temperature_range
        ``(lowest, highest)`` group temperature the model was fitted on [deg C]; ``None``
        when unknown (maps made elsewhere).
    group_temperatures, group_frames
        Temperature and number of frames of each master used in the fit.
    scale_factor
        The 12-bit to 16-bit factor of the values.

    Examples
    --------
    >>> import numpy as np
    >>> model = BiasModel.from_maps(np.full((2, 3), 3200.0), np.full((2, 3), 3.0),
    ...                             temperature_range=(-10.0, 30.0))
    >>> float(model.predict(10.0)[0, 0])
    3230.0
    >>> model.predict([0.0, 10.0]).shape
    (2, 2, 3)
    """

    a_map: np.ndarray
    b_map: np.ndarray
    mask: np.ndarray
    temperature_range: tuple[float, float] | None = None
    group_temperatures: tuple[float, ...] = ()
    group_frames: tuple[int, ...] = ()
    scale_factor: float = 16.0

    def __post_init__(self) -> None:
        self.a_map = np.asarray(self.a_map, dtype=np.float32)
        self.b_map = np.asarray(self.b_map, dtype=np.float32)
        self.mask = np.asarray(self.mask, dtype=bool)
        if self.a_map.ndim != 2 or self.a_map.shape != self.b_map.shape:
            raise InputDataError(
                f"a-map {self.a_map.shape} and b-map {self.b_map.shape} must be 2-D and of one shape"
            )
        if self.mask.shape != self.a_map.shape:
            raise InputDataError(f"mask {self.mask.shape} differs from the maps {self.a_map.shape}")

    @classmethod
    def from_maps(
        cls,
        a_map: np.ndarray,
        b_map: np.ndarray,
        mask: np.ndarray | None = None,
        *,
        temperature_range: tuple[float, float] | None = None,
        scale_factor: float = 16.0,
    ) -> BiasModel:
        """Build a model from a and b arrays; pixels NaN in either map count as masked."""
        a_map = np.asarray(a_map, dtype=np.float32)
        b_map = np.asarray(b_map, dtype=np.float32)
        if a_map.shape != b_map.shape:
            raise InputDataError(f"a-map {a_map.shape} and b-map {b_map.shape} differ in shape")
        derived = ~(np.isfinite(a_map) & np.isfinite(b_map))
        mask = derived if mask is None else (np.asarray(mask, dtype=bool) | derived)
        return cls(a_map, b_map, mask, temperature_range=temperature_range, scale_factor=scale_factor)

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, columns)`` of the maps."""
        return self.a_map.shape  # type: ignore[return-value]

    def predict(self, temperature: float | np.ndarray | list[float]) -> np.ndarray:
        """Bias frame(s) at ``temperature`` [deg C], float32 in 16-bit ADU.

        A scalar gives one ``(rows, columns)`` frame; a sequence gives a stack
        ``(n, rows, columns)``. Masked pixels are NaN. A temperature outside the fitted range
        is logged as a warning: the model is extrapolating there.
        """
        temps = np.asarray(temperature, dtype=np.float64)
        if not np.all(np.isfinite(temps)):
            raise InputDataError(f"temperature must be a finite number, got {temperature!r}")
        self.warn_if_extrapolating(temps)
        if temps.ndim == 0:
            return (self.a_map + self.b_map * np.float32(temps)).astype(np.float32)
        return (self.a_map[None] + self.b_map[None] * temps.astype(np.float32)[:, None, None]).astype(
            np.float32
        )

    def warn_if_extrapolating(self, temperatures: np.ndarray) -> bool:
        """Log a warning for temperatures outside the fitted range; return whether any are."""
        if self.temperature_range is None:
            return False
        low, high = self.temperature_range
        outside = np.atleast_1d(temperatures)
        outside = outside[(outside < low - 1e-9) | (outside > high + 1e-9)]
        if outside.size:
            logger.warning(
                "temperature %s deg C lies outside the fitted range %.2f..%.2f deg C: "
                "the model is extrapolating",
                ", ".join(f"{t:g}" for t in outside),
                low,
                high,
            )
            return True
        return False

    # ------------------------------------------------------------------ files
    def save(self, model_dir: str | Path, cards: dict[str, object] | None = None) -> tuple[Path, Path]:
        """Write ``bias_a_map.fits`` and ``bias_b_map.fits`` into ``model_dir``.

        Parameters
        ----------
        model_dir
            Folder (created if missing).
        cards
            Extra header cards for both files (provenance).

        Returns
        -------
        a_path, b_path
        """
        model_dir = Path(model_dir)
        model_dir.mkdir(parents=True, exist_ok=True)
        common: dict[str, object] = {
            "NMASKED": (int(self.mask.sum()), "pixels left out of the fit (NaN in the map)"),
            "MODEL": ("bias(T) = A + B * T", "T = sensor temperature in deg C"),
        }
        if self.temperature_range is not None:
            common["TMIN"] = (float(self.temperature_range[0]), "[deg C] lowest fitted temperature")
            common["TMAX"] = (float(self.temperature_range[1]), "[deg C] highest fitted temperature")
        if self.group_frames:
            common["NGROUPS"] = (len(self.group_frames), "temperature groups (masters) fitted")
            common["NFRAMES"] = (int(sum(self.group_frames)), "raw frames behind the masters")
        common.update(cards or {})
        a_header = product_header(
            "BIAS_A",
            "bias intercept a: model bias at 0 deg C",
            scale_factor=self.scale_factor,
            cards=common,
        )
        b_header = product_header(
            "BIAS_B",
            "bias slope b: change of bias per deg C",
            bunit="adu / deg C",
            scale_factor=self.scale_factor,
            cards=common,
        )
        mask_hdu = fits.ImageHDU(self.mask.astype(np.uint8), name="MASK")
        mask_hdu.header["COMMENT"] = "1 = pixel left out of the fit (hot-pixel mask), 0 = fitted"
        extensions: list[fits.ImageHDU | fits.BinTableHDU] = [mask_hdu]
        if self.group_temperatures:
            table = fits.BinTableHDU.from_columns(
                [
                    fits.Column(name="TEMPERATURE", format="D", unit="deg C", array=self.group_temperatures),
                    fits.Column(name="NFRAMES", format="J", array=self.group_frames),
                ],
                name="GROUPS",
            )
            extensions.append(table)
        a_path = write_image(model_dir / A_MAP_NAME, self.a_map, a_header, extensions)
        b_path = write_image(model_dir / B_MAP_NAME, self.b_map, b_header)
        return a_path, b_path

    @classmethod
    def load(cls, path: str | Path, b_map_path: str | Path | None = None) -> BiasModel:
        """Load a model.

        Parameters
        ----------
        path
            A pipeline output folder (containing ``bias_model/``), a ``bias_model`` folder,
            or the a-map FITS file.
        b_map_path
            The b-map FITS file; by default ``bias_b_map.fits`` beside the a-map.

        Returns
        -------
        BiasModel

        Raises
        ------
        InputDataError
            When the files are missing, unreadable or of different shapes.
        """
        path = Path(path)
        if path.is_dir():
            model_dir = path / MODEL_DIR_NAME if (path / MODEL_DIR_NAME).is_dir() else path
            a_path = model_dir / A_MAP_NAME
            if not a_path.is_file():
                raise InputDataError(
                    f"no {A_MAP_NAME} in {path}; give a pipeline output folder or the a-map file"
                )
        else:
            a_path = path
        b_path = Path(b_map_path) if b_map_path is not None else a_path.with_name(B_MAP_NAME)
        a_map, a_header = read_image(a_path, "a-map")
        b_map, _ = read_image(b_path, "b-map")
        if a_map.shape != b_map.shape:
            raise InputDataError(
                f"a-map {a_path} is {a_map.shape[0]}x{a_map.shape[1]} but b-map {b_path} is "
                f"{b_map.shape[0]}x{b_map.shape[1]}; give maps from one model"
            )
        mask = None
        temperatures: tuple[float, ...] = ()
        frames: tuple[int, ...] = ()
        try:
            with fits.open(a_path, memmap=False) as hdul:
                names = [h.name for h in hdul]
                if "MASK" in names:
                    mask = np.asarray(hdul["MASK"].data, dtype=bool)
                if "GROUPS" in names:
                    temperatures = tuple(float(t) for t in hdul["GROUPS"].data["TEMPERATURE"])
                    frames = tuple(int(n) for n in hdul["GROUPS"].data["NFRAMES"])
        except Exception as exc:
            raise InputDataError(f"a-map {a_path} cannot be read: {exc}") from None
        if mask is not None and mask.shape != a_map.shape:
            mask = None
        t_range = None
        if "TMIN" in a_header and "TMAX" in a_header:
            t_range = (float(a_header["TMIN"]), float(a_header["TMAX"]))
        model = cls.from_maps(
            a_map,
            b_map,
            mask,
            temperature_range=t_range,
            scale_factor=float(a_header.get("SCALEFAC", 16.0)),
        )
        model.group_temperatures = temperatures
        model.group_frames = frames
        return model
