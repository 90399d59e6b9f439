"""The per-pixel bias model ``bias(T) = a + b * T (+ c * T^2)`` and its files.

This is the only module that reads or writes model files:

- ``bias_a_map.fits``: ``a``, the bias at 0 deg C [16-bit ADU] (the seed's meaning), with the
  user's hot-pixel mask as a ``MASK`` extension and the fitted groups as a ``GROUPS`` table;
- ``bias_b_map.fits``: ``b`` [ADU / deg C];
- ``bias_model.fits``: the self-describing model, one named extension per map: ``A``, ``B``
  (``C`` for degree 2), ``SIGMA_A``, ``SIGMA_B``, ``COV_AB`` (and the ``C`` terms), ``RMS``,
  ``CHI2`` (reduced), ``NGROUPS``, ``READNOISE``, ``MASK`` (the DQ bit mask), ``DQ_DEF`` (the
  table of its bits) and ``GROUPS``; the primary header holds the metadata (``TREF``,
  ``TMIN``/``TMAX``, frames, groups, units, scale factor, version).

Pixels of the user's hot-pixel mask are not fitted and hold NaN in every map, so a synthetic
frame says "no model here" rather than inventing a value.
"""

from __future__ import annotations

import datetime as _dt
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from astropy.io import fits

from .dates import DATE_BEGIN_KEY, DATE_END_KEY, VALID_FROM_KEY, VALID_TO_KEY, format_date, parse_date
from .errors import InputDataError
from .products import add_card, product_header, read_image, write_fits_atomic, write_image
from .quality import DQ_BITS, HOT_MASK
from .registry import A_MAP_NAME, B_MAP_NAME, MODEL_FILE_NAME
from .registry import MODEL_DIR as MODEL_DIR_NAME
from .units import DEFAULT_SCALE_FACTOR

if TYPE_CHECKING:
    from astropy.nddata import CCDData

logger = logging.getLogger(__name__)

COEFFICIENT_NAMES = ("A", "B", "C")

#: The largest global offset [as a fraction of the model's median one-frame read noise] that
#: ``verify`` and ``compare`` accept by default: a bias wrong by a tenth of the read noise moves
#: a dark frame's mean (a few ADU of dark signal) by far less than one pixel's noise, while an
#: aged sensor's offset of a third of the read noise is caught. See :meth:`BiasModel.offset_tolerance`.
OFFSET_TOLERANCE_FRACTION = 0.1


class ScaledCovariance:
    """The ``(P, P, rows, columns)`` covariance of a fit in which every pixel's covariance is one
    ``(P, P)`` matrix times that pixel's noise variance, held as those two and computed where it
    is read: ``cov[j, k]`` is one float32 map, ``cov[:, :, pixels]`` the matrices of some pixels.
    A 2048 x 2048 model keeps one 16 MB variance map instead of P^2 maps (64 MB at degree 1,
    144 MB at degree 2); ``numpy.asarray(cov)`` gives the whole array when it is really wanted.

    Parameters
    ----------
    unit
        ``(P, P)`` covariance for unit noise variance.
    variance
        ``(rows, columns)`` float32 noise variance per pixel (NaN where nothing was fitted).

    Examples
    --------
    >>> cov = ScaledCovariance(np.array([[2.0, 0.5], [0.5, 1.0]]), np.full((2, 3), 4.0, np.float32))
    >>> cov.shape, float(cov[0, 1][1, 2]), cov[:, :, np.eye(2, 3, dtype=bool)].shape
    ((2, 2, 2, 3), 2.0, (2, 2, 2))
    """

    def __init__(self, unit: np.ndarray, variance: np.ndarray) -> None:
        self.unit = np.asarray(unit, dtype=np.float32)
        self.variance = np.asarray(variance, dtype=np.float32)

    @property
    def shape(self) -> tuple[int, ...]:
        """``(P, P, rows, columns)``."""
        return (*self.unit.shape, *self.variance.shape)

    @property
    def ndim(self) -> int:
        """4."""
        return 4

    @property
    def dtype(self) -> np.dtype:
        """float32."""
        return np.dtype(np.float32)

    def __getitem__(self, key: object) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key) or len(key) > 4:
            return np.asarray(self)[key]
        unit = self.unit[key[:2]]
        pixels = self.variance[key[2:]] if len(key) > 2 else self.variance
        unit = np.asarray(unit)
        return unit.reshape(unit.shape + (1,) * pixels.ndim) * pixels

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        whole = self.unit[:, :, None, None] * self.variance[None, None]
        return whole if dtype is None else whole.astype(dtype)

    def astype(self, dtype: object) -> np.ndarray:
        """The whole array in ``dtype``."""
        return np.asarray(self, dtype=dtype)

    def reshape(self, *shape: int) -> np.ndarray:
        """The whole array reshaped."""
        return np.asarray(self).reshape(*shape)


@dataclass
class BiasModel:
    """Per-pixel polynomial bias model in temperature.

    Attributes
    ----------
    a_map
        Bias at 0 deg C [16-bit ADU], float32, NaN where ``mask`` is True.
    b_map
        Slope [ADU per deg C] (at 0 deg C for degree 2), float32, NaN where ``mask`` is True.
    mask
        True where a pixel was left out of the fit (the user's hot-pixel mask).
    temperature_range
        ``(lowest, highest)`` group temperature fitted [deg C]; ``None`` when unknown.
    group_temperatures, group_frames
        Temperature and number of frames of each input of the fit.
    group_leverage
        Leverage ``h_k`` of each input: its leave-one-out residual is the in-sample residual
        divided by ``1 - h_k`` (exact for this weighted linear fit).
    scale_factor
        The 12-bit to 16-bit factor of the values.
    c_map
        Quadratic term [ADU per deg C^2] of a degree-2 model, else ``None``.
    covariance
        ``(P, P, rows, columns)`` covariance of ``a, b[, c]``; ``None`` when unknown. A fit
        gives it as a :class:`ScaledCovariance` (indexed as the array, computed where read).
    rms, chi2, ngroups
        Residual rms [ADU], reduced chi-square and number of inputs fitted, per pixel.
    dq
        uint32 bad-pixel flags (see :mod:`bias_pipeline.quality`); ``None`` when unknown.
    read_noise
        Temporal noise of one frame per pixel [ADU].
    tref
        Reference temperature the fit was made about [deg C].
    date_range
        ``(first, last)`` observation date (UTC) of the frames behind the fit, the files'
        ``DATE-BEG`` and ``DATE-END``; ``None`` when no frame had a date.
    valid_from, valid_to
        Dates (UTC) the user declared the model valid from and to (``VALID-FROM``,
        ``VALID-TO``); ``None`` when not declared.

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
    scale_factor: float = DEFAULT_SCALE_FACTOR
    group_leverage: tuple[float, ...] = ()
    c_map: np.ndarray | None = None
    covariance: np.ndarray | ScaledCovariance | None = None
    rms: np.ndarray | None = None
    chi2: np.ndarray | None = None
    ngroups: np.ndarray | None = None
    dq: np.ndarray | None = None
    read_noise: np.ndarray | None = None
    tref: float | None = None
    date_range: tuple[_dt.datetime, _dt.datetime] | None = None
    valid_from: _dt.datetime | None = None
    valid_to: _dt.datetime | None = None

    def __post_init__(self) -> None:
        self.a_map = np.asarray(self.a_map, dtype=np.float32)
        self.b_map = np.asarray(self.b_map, dtype=np.float32)
        self.mask = np.asarray(self.mask, dtype=bool)
        if self.a_map.ndim != 2 or self.a_map.shape != self.b_map.shape:
            raise InputDataError(f"a-map {self.a_map.shape} and b-map {self.b_map.shape} must be 2-D and of one shape")
        if self.mask.shape != self.a_map.shape:
            raise InputDataError(f"mask {self.mask.shape} differs from the maps {self.a_map.shape}")
        if self.c_map is not None:
            self.c_map = np.asarray(self.c_map, dtype=np.float32)

    @classmethod
    def from_maps(
        cls,
        a_map: np.ndarray,
        b_map: np.ndarray,
        mask: np.ndarray | None = None,
        *,
        temperature_range: tuple[float, float] | None = None,
        scale_factor: float = DEFAULT_SCALE_FACTOR,
        **more: Any,
    ) -> BiasModel:
        """Build a model from a and b arrays; pixels NaN in either map count as masked.

        ``more`` are further fields of the model (``read_noise``, ``group_temperatures``, ...)."""
        a_map = np.asarray(a_map, dtype=np.float32)
        b_map = np.asarray(b_map, dtype=np.float32)
        if a_map.shape != b_map.shape:
            raise InputDataError(f"a-map {a_map.shape} and b-map {b_map.shape} differ in shape")
        derived = ~(np.isfinite(a_map) & np.isfinite(b_map))
        mask = derived if mask is None else (np.asarray(mask, dtype=bool) | derived)
        return cls(a_map, b_map, mask, temperature_range=temperature_range, scale_factor=scale_factor, **more)

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, columns)`` of the maps."""
        return self.a_map.shape  # type: ignore[return-value]

    @property
    def degree(self) -> int:
        """1 for ``a + b T``, 2 with a quadratic term."""
        return 1 if self.c_map is None else 2

    @property
    def law(self) -> str:
        """The model as a formula: ``bias(T) = A + B*T`` (``+ C*T^2`` for degree 2)."""
        return "bias(T) = A + B*T" + (" + C*T^2" if self.c_map is not None else "")

    @property
    def coefficients(self) -> list[np.ndarray]:
        """``[a, b]`` or ``[a, b, c]``."""
        return [self.a_map, self.b_map] + ([] if self.c_map is None else [self.c_map])

    @property
    def flagged(self) -> np.ndarray:
        """Pixels to leave out of statistics: masked or carrying any DQ flag."""
        return self.mask if self.dq is None else (self.mask | (self.dq != 0))

    @property
    def typical_read_noise(self) -> float:
        """Median one-frame read noise [ADU] over the unflagged pixels: the ``READNOISE`` map,
        else the fit's residual ``RMS`` map; NaN when the model carries neither."""
        for noise in (self.read_noise, self.rms):
            if noise is not None and noise.shape == self.shape:
                values = noise[~self.flagged & np.isfinite(noise)]
                if values.size:
                    return float(np.median(values))
        return float("nan")

    def offset_tolerance(self, fraction: float = OFFSET_TOLERANCE_FRACTION) -> float:
        """The default tolerance on a global bias offset [ADU]: ``fraction`` of
        :attr:`typical_read_noise` (NaN when the model carries no noise map).

        >>> model = BiasModel.from_maps(np.zeros((2, 2)), np.zeros((2, 2)), read_noise=np.full((2, 2), 32.0))
        >>> model.offset_tolerance()
        3.2
        """
        return float(fraction) * self.typical_read_noise

    def predict(
        self, temperature: float | np.ndarray | list[float], *, return_sigma: bool = False
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Bias frame(s) at ``temperature`` [deg C], float32 in 16-bit ADU.

        A scalar gives one ``(rows, columns)`` frame; a sequence gives a stack
        ``(n, rows, columns)``. Masked pixels are NaN. A temperature outside the fitted range
        is logged as a warning: the model is extrapolating there.

        Parameters
        ----------
        temperature
            Sensor temperature(s) [deg C].
        return_sigma
            Also return the model's standard error at that temperature (from the fit's
            covariance; NaN everywhere when the model carries none).

        Returns
        -------
        frame or (frame, sigma)
        """
        temps = np.asarray(temperature, dtype=np.float64)
        if not np.all(np.isfinite(temps)):
            raise InputDataError(f"temperature must be a finite number, got {temperature!r}")
        self.warn_if_extrapolating(temps)
        frames = np.stack([self._at(float(t))[0] for t in np.atleast_1d(temps)])
        value = frames[0] if temps.ndim == 0 else frames
        if not return_sigma:
            return value
        sigmas = np.stack([self._at(float(t), sigma=True)[1] for t in np.atleast_1d(temps)])
        return value, sigmas[0] if temps.ndim == 0 else sigmas

    def _at(self, temperature: float, sigma: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        t = np.float32(temperature)
        value = self.a_map + t * self.b_map
        if self.c_map is not None:
            value = value + t * t * self.c_map
        if not sigma:
            return value.astype(np.float32), None
        if self.covariance is None:
            return value.astype(np.float32), np.full(self.shape, np.nan, dtype=np.float32)
        powers = temperature ** np.arange(self.degree + 1)
        # p^T C p summed one (rows, columns) map at a time: the whole (P, P, rows, columns)
        # covariance in float64 would be 128 MB for a 2048 x 2048 model, on every call of at().
        variance = np.zeros(self.shape, dtype=np.float64)
        for j in range(self.degree + 1):
            for k in range(self.degree + 1):
                variance += (powers[j] * powers[k]) * np.asarray(self.covariance[j, k], dtype=np.float64)
        return value.astype(np.float32), np.sqrt(np.maximum(variance, 0)).astype(np.float32)

    def at(self, temperature: float) -> CCDData:
        """The model's bias frame at ``temperature`` as an :class:`astropy.nddata.CCDData`, for
        ``ccdproc.subtract_bias(ccd, model.at(T))`` and NDData arithmetic (``ccd.subtract``).

        - ``data``: :meth:`predict` at ``temperature``, float32 [16-bit ADU], unit ``adu``;
        - ``uncertainty``: :class:`~astropy.nddata.StdDevUncertainty`, the model's standard
          error at ``temperature`` from the fit covariance (``predict(T, return_sigma=True)``);
          ``None`` for a model without fit statistics (made from maps), rather than NaN
          everywhere, which would make every subtracted pixel's uncertainty NaN;
        - ``mask``: :attr:`flagged` (left out of the fit, or any DQ flag);
        - ``flags``: the uint32 DQ bits (named in the header's ``DQ_*`` cards and the model
          file's ``DQ_DEF``);
        - ``meta``: a FITS header with the temperature (``TEMPERAT`` and ``HIERARCH
          TEMPERATURE``), the law (``MODEL``) and the meaning of its coefficients, ``TREF``,
          ``TMIN``/``TMAX``, ``DATE-BEG``/``DATE-END`` (and ``VALID-FROM``/``VALID-TO`` when
          declared), ``NCOMBINE`` (raw frames behind the fit, as ccdproc counts them) and the
          software's version.

        Pixels without a model (the user's hot-pixel mask) hold NaN in ``data`` and
        ``uncertainty`` and are masked. NaN propagates through ``ccdproc.subtract_bias`` and
        ``CCDData.subtract``: the result is NaN there and its mask (the two masks ORed) is True,
        so code that honours masks skips those pixels and code that does not sees NaN, never an
        invented bias value. A temperature outside the fitted range is logged as a warning (the
        model extrapolates) and marked ``EXTRAPOL = T``.

        Parameters
        ----------
        temperature
            Sensor temperature [deg C].

        Returns
        -------
        astropy.nddata.CCDData

        Raises
        ------
        InputDataError
            When ``temperature`` is not a finite number.

        Examples
        --------
        >>> model = BiasModel.from_maps(np.full((2, 3), 3000.0), np.full((2, 3), 2.0), temperature_range=(0.0, 30.0))
        >>> bias = model.at(20.0)
        >>> bias.unit, float(bias.data[0, 0]), bias.header["TEMPERAT"], bool(bias.mask.any())
        (Unit("adu"), 3040.0, 20.0, False)
        """
        # Imported here: astropy.nddata costs a third of a second, which the commands that load
        # a model (inspect, generate) would pay for nothing.
        from astropy.nddata import CCDData, StdDevUncertainty

        try:
            temperature = float(temperature)
        except (TypeError, ValueError):
            raise InputDataError(f"temperature must be a number [deg C], got {temperature!r}") from None
        data, sigma = self.predict(temperature, return_sigma=True)
        uncertainty = None if self.covariance is None else StdDevUncertainty(sigma)
        flags = self.dq if self.dq is not None else np.where(self.mask, HOT_MASK.value, 0)
        return CCDData(
            data,
            unit="adu",
            uncertainty=uncertainty,
            mask=self.flagged.copy(),
            flags=np.asarray(flags, dtype=np.uint32).copy(),
            meta=self._header_at(temperature),
        )

    def _header_at(self, temperature: float) -> fits.Header:
        """The header of :meth:`at`'s frame."""
        cards: dict[str, object] = {
            "TEMPERAT": (temperature, "[deg C] temperature the bias is modelled at"),
            "TEMPERATURE": (temperature, "[deg C] temperature the bias is modelled at"),
        }
        if self.temperature_range is not None:
            low, high = self.temperature_range
            outside = bool(temperature < low - 1e-9 or temperature > high + 1e-9)
            cards["EXTRAPOL"] = (outside, "temperature outside TMIN..TMAX: extrapolated")
        if self.group_frames:
            cards["NCOMBINE"] = (int(sum(self.group_frames)), "raw frames behind the fit")
        cards.update(self._metadata())
        header = product_header(
            "SYNTHETIC_BIAS",
            f"model bias at {temperature:g} deg C from {self.law}",
            scale_factor=self.scale_factor,
            cards=cards,
        )
        meanings = (
            "A: per-pixel bias at T = 0 deg C [adu]",
            "B: per-pixel change of bias per deg C [adu / deg C]",
            "C: per-pixel quadratic term, times T^2 [adu / deg C**2]",
        )
        header["COMMENT"] = f"{self.law}, T in deg C:"
        for meaning in meanings[: self.degree + 1]:
            header["COMMENT"] = meaning
        if self.tref is not None:
            header["COMMENT"] = "TREF: where the fit was centred; A, B are about T = 0 deg C"
        header["COMMENT"] = "uncertainty: model standard error at TEMPERAT (fit covariance)"
        header["COMMENT"] = "mask: left out of the fit or any DQ flag; flags: DQ bits (DQ_*)"
        return header

    def warn_if_extrapolating(self, temperatures: np.ndarray) -> bool:
        """Log a warning for temperatures outside the fitted range; return whether any are."""
        if self.temperature_range is None:
            return False
        low, high = self.temperature_range
        outside = np.atleast_1d(temperatures)
        outside = outside[(outside < low - 1e-9) | (outside > high + 1e-9)]
        if outside.size:
            logger.warning(
                "temperature %s deg C lies outside the fitted range %.2f..%.2f deg C: the model is extrapolating",
                ", ".join(f"{t:g}" for t in outside),
                low,
                high,
            )
            return True
        return False

    # ------------------------------------------------------------------ files
    def _metadata(self) -> dict[str, object]:
        cards: dict[str, object] = {
            "NMASKED": (int(self.mask.sum()), "pixels left out of the fit (NaN in the maps)"),
            "MODEL": (self.law, "T in deg C"),
            "DEGREE": (self.degree, "polynomial degree in temperature"),
        }
        if self.tref is not None:
            cards["TREF"] = (float(self.tref), "[deg C] reference temperature of the fit")
        if self.temperature_range is not None:
            cards["TMIN"] = (float(self.temperature_range[0]), "[deg C] lowest fitted temperature")
            cards["TMAX"] = (float(self.temperature_range[1]), "[deg C] highest fitted temperature")
        if self.group_frames:
            cards["NGROUPS"] = (len(self.group_frames), "inputs (masters or frames) fitted")
            cards["NFRAMES"] = (int(sum(self.group_frames)), "raw frames behind the fit")
        if self.date_range is not None:
            cards[DATE_BEGIN_KEY] = (format_date(self.date_range[0]), "[UTC] first observation behind the fit")
            cards[DATE_END_KEY] = (format_date(self.date_range[1]), "[UTC] last observation behind the fit")
        if self.valid_from is not None:
            cards[VALID_FROM_KEY] = (format_date(self.valid_from), "[UTC] model declared valid from")
        if self.valid_to is not None:
            cards[VALID_TO_KEY] = (format_date(self.valid_to), "[UTC] model declared valid until")
        if self.dq is not None:
            cards["NFLAGGED"] = (int(np.count_nonzero(self.dq)), "pixels with any DQ flag")
            for bit in DQ_BITS:
                cards[f"DQ_{bit.name}"] = (bit.value, bit.description)
        return cards

    def save(self, model_dir: str | Path, cards: dict[str, object] | None = None) -> list[Path]:
        """Write ``bias_a_map.fits``, ``bias_b_map.fits`` and, when the model carries its
        uncertainties, ``bias_model.fits`` into ``model_dir``.

        Parameters
        ----------
        model_dir
            Folder (created if missing).
        cards
            Extra header cards for every file (provenance).

        Returns
        -------
        list of pathlib.Path
            The files written.
        """
        model_dir = Path(model_dir)
        model_dir.mkdir(parents=True, exist_ok=True)
        common = {**self._metadata(), **(cards or {})}
        a_header = product_header(
            "BIAS_A", "bias intercept a: model bias at 0 deg C", scale_factor=self.scale_factor, cards=common
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
            extensions.append(self._groups_table())
        paths = [
            write_image(model_dir / A_MAP_NAME, self.a_map, a_header, extensions),
            write_image(model_dir / B_MAP_NAME, self.b_map, b_header),
        ]
        if self.covariance is not None:
            paths.append(self._write_model_file(model_dir / MODEL_FILE_NAME, common))
        return paths

    def _groups_table(self) -> fits.BinTableHDU:
        return fits.BinTableHDU.from_columns(
            [
                fits.Column(name="TEMPERATURE", format="D", unit="deg C", array=self.group_temperatures),
                fits.Column(name="NFRAMES", format="J", array=self.group_frames),
                fits.Column(
                    name="LEVERAGE",
                    format="D",
                    array=self.group_leverage or [np.nan] * len(self.group_temperatures),
                ),
            ],
            name="GROUPS",
        )

    def to_fits(self, path: str | Path) -> Path:
        """Write a fitted model as one self-describing FITS file (``bias_model.fits`` layout).

        Parameters
        ----------
        path
            The file to write (atomically); its folder must exist.

        Returns
        -------
        Path
            ``path``; :meth:`load` reads it back.

        Raises
        ------
        InputDataError
            For a model without fit statistics (made with :meth:`from_maps`): save it with
            :meth:`save` into a folder instead.
        """
        if self.covariance is None:
            raise InputDataError("this model has no fit statistics (made from maps); save it with save(folder)")
        return self._write_model_file(Path(path), self._metadata())

    def _write_model_file(self, path: Path, cards: dict[str, object]) -> Path:
        primary = fits.PrimaryHDU(
            header=product_header(
                "BIAS_MODEL",
                "per-pixel bias model in temperature with uncertainties",
                scale_factor=self.scale_factor,
                cards=cards,
            )
        )
        hdus: list[fits.ImageHDU | fits.BinTableHDU | fits.PrimaryHDU] = [primary]

        def image(data: np.ndarray, name: str, unit: str, what: str) -> None:
            hdu = fits.ImageHDU(np.asarray(data, dtype=np.float32), name=name)
            add_card(hdu.header, "BUNIT", unit)
            add_card(hdu.header, "CONTENT", what[:68])
            hdus.append(hdu)

        units = ("adu", "adu / deg C", "adu / deg C**2")
        for j, coefficient in enumerate(self.coefficients):
            image(coefficient, COEFFICIENT_NAMES[j], units[j], f"coefficient of T^{j}, T in deg C")
        assert self.covariance is not None
        for j in range(self.degree + 1):
            sigma = np.sqrt(np.maximum(self.covariance[j, j], 0))
            image(sigma, f"SIGMA_{COEFFICIENT_NAMES[j]}", units[j], f"standard error of {COEFFICIENT_NAMES[j]}")
        for j in range(self.degree + 1):
            for k in range(j + 1, self.degree + 1):
                name = f"COV_{COEFFICIENT_NAMES[j]}{COEFFICIENT_NAMES[k]}"
                image(
                    self.covariance[j, k],
                    name,
                    "",
                    f"covariance of {COEFFICIENT_NAMES[j]} and {COEFFICIENT_NAMES[k]}",
                )
        for data, name, unit, what in (
            (self.rms, "RMS", "adu", "rms of the fit residuals"),
            (self.chi2, "CHI2", "", "reduced chi-square of the fit"),
            (self.read_noise, "READNOISE", "adu", "temporal noise of one frame"),
        ):
            if data is not None:
                image(data, name, unit, what)
        if self.ngroups is not None:
            hdus.append(fits.ImageHDU(np.asarray(self.ngroups, dtype=np.int16), name="NGROUPS"))
        dq = self.dq if self.dq is not None else np.where(self.mask, HOT_MASK.value, 0).astype(np.uint32)
        dq_hdu = fits.ImageHDU(dq.astype(np.int32), name="MASK")
        dq_hdu.header["COMMENT"] = "bit mask of bad-pixel flags, bits named in DQ_DEF; 0 = good"
        hdus.append(dq_hdu)
        hdus.append(
            fits.BinTableHDU.from_columns(
                [
                    fits.Column(name="BIT", format="J", array=[b.bit for b in DQ_BITS]),
                    fits.Column(name="VALUE", format="J", array=[b.value for b in DQ_BITS]),
                    fits.Column(name="NAME", format="20A", array=[b.name for b in DQ_BITS]),
                    fits.Column(name="DESCRIPTION", format="80A", array=[b.description for b in DQ_BITS]),
                ],
                name="DQ_DEF",
            )
        )
        if self.group_temperatures:
            hdus.append(self._groups_table())
        return write_fits_atomic(path, fits.HDUList(hdus))

    @classmethod
    def load(cls, path: str | Path, b_map_path: str | Path | None = None) -> BiasModel:
        """Load a model.

        Parameters
        ----------
        path
            A pipeline output folder (containing ``bias_model/``), a ``bias_model`` folder,
            ``bias_model.fits``, or the a-map FITS file.
        b_map_path
            The b-map FITS file; by default ``bias_b_map.fits`` beside the a-map.

        Returns
        -------
        BiasModel
            With uncertainties and flags when ``bias_model.fits`` is found (a folder, or that
            file given) and no separate b-map was named.

        Raises
        ------
        InputDataError
            When the files are missing, unreadable or of different shapes.

        Examples
        --------
        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> maps = BiasModel.from_maps(np.full((2, 3), 3200.0), np.full((2, 3), 3.0), temperature_range=(-10.0, 30.0))
        >>> [p.name for p in maps.save(folder)]
        ['bias_a_map.fits', 'bias_b_map.fits']
        >>> model = BiasModel.load(folder)
        >>> model.temperature_range, float(model.predict(20.0)[1, 2])
        ((-10.0, 30.0), 3260.0)
        >>> int(model.mask.sum())
        0
        """
        path = Path(path)
        if path.is_dir():
            model_dir = path / MODEL_DIR_NAME if (path / MODEL_DIR_NAME).is_dir() else path
            if (model_dir / MODEL_FILE_NAME).is_file() and b_map_path is None:
                return cls._load_model_file(model_dir / MODEL_FILE_NAME)
            a_path = model_dir / A_MAP_NAME
            if not a_path.is_file():
                raise InputDataError(f"no {A_MAP_NAME} in {path}; give a pipeline output folder or the a-map file")
        elif b_map_path is None and (path.name == MODEL_FILE_NAME or _is_model_file(path)):
            return cls._load_model_file(path)
        else:
            a_path = path
        b_path = Path(b_map_path) if b_map_path is not None else a_path.with_name(B_MAP_NAME)
        a_map, a_header = read_image(a_path, "a-map")
        _check_kind(a_path, a_header, "BIAS_A", "a-map")
        if int(a_header.get("DEGREE", 1)) > 1:
            return cls._load_whole(a_path, a_header, b_path if b_map_path is not None else None)
        b_map, b_header = read_image(b_path, "b-map")
        _check_kind(b_path, b_header, "BIAS_B", "b-map")
        _check_same_run(a_path, a_header, b_path, b_header)
        if a_map.shape != b_map.shape:
            raise InputDataError(
                f"a-map {a_path} is {a_map.shape[0]}x{a_map.shape[1]} but b-map {b_path} is "
                f"{b_map.shape[0]}x{b_map.shape[1]}; give maps from one model"
            )
        mask = None
        temperatures: tuple[float, ...] = ()
        frames: tuple[int, ...] = ()
        leverage: tuple[float, ...] = ()
        try:
            with fits.open(a_path, memmap=False) as hdul:
                names = [h.name for h in hdul]
                if "MASK" in names:
                    mask = np.asarray(hdul["MASK"].data, dtype=bool)
                if "GROUPS" in names:
                    temperatures = tuple(float(t) for t in hdul["GROUPS"].data["TEMPERATURE"])
                    frames = tuple(int(n) for n in hdul["GROUPS"].data["NFRAMES"])
                    leverage = _leverage(hdul["GROUPS"].data)
        except Exception as exc:
            raise InputDataError(f"a-map {a_path} cannot be read: {exc}") from None
        if mask is not None and mask.shape != a_map.shape:
            mask = None
        return cls.from_maps(
            a_map,
            b_map,
            mask,
            temperature_range=_range(a_header),
            scale_factor=float(a_header.get("SCALEFAC", DEFAULT_SCALE_FACTOR)),
            group_temperatures=temperatures,
            group_frames=frames,
            group_leverage=leverage,
            tref=float(a_header["TREF"]) if "TREF" in a_header else None,
            **_dates(a_path, a_header),
        )

    @classmethod
    def _load_whole(cls, a_path: Path, a_header: fits.Header, b_path: Path | None) -> BiasModel:
        """The model of a degree-2 a-map: its c term is only in the one-file model beside it."""
        whole = a_path.with_name(MODEL_FILE_NAME)
        degree = int(a_header["DEGREE"])
        if not whole.is_file():
            raise InputDataError(
                f"a-map {a_path} belongs to a degree-{degree} model (DEGREE = {degree}): a and b alone would give "
                f"a straight line; its other terms are in {MODEL_FILE_NAME}, which is not beside it: give that "
                "file (generate: --model)"
            )
        model = cls._load_model_file(whole)
        try:
            whole_header = fits.getheader(whole)
        except Exception as exc:
            raise InputDataError(f"model file {whole} cannot be read: {exc}") from None
        _check_same_run(a_path, a_header, whole, whole_header)
        if b_path is not None:
            b_map, b_header = read_image(b_path, "b-map")
            _check_kind(b_path, b_header, "BIAS_B", "b-map")
            if b_map.shape != model.shape or not np.array_equal(b_map, model.b_map, equal_nan=True):
                raise InputDataError(
                    f"b-map {b_path} is not the b of a-map {a_path}'s model ({whole}); give maps of one run"
                )
        logger.info("a-map %s is of a degree-%d model: loaded the whole model from %s", a_path, degree, whole)
        return model

    @classmethod
    def _load_model_file(cls, path: Path) -> BiasModel:
        try:
            with fits.open(path, memmap=False) as hdul:
                header = hdul[0].header
                maps = {h.name: np.asarray(h.data) for h in hdul[1:] if h.is_image}
                groups = hdul["GROUPS"].data if "GROUPS" in hdul else None
                temperatures = tuple(float(t) for t in groups["TEMPERATURE"]) if groups is not None else ()
                frames = tuple(int(n) for n in groups["NFRAMES"]) if groups is not None else ()
                leverage = _leverage(groups)
        except Exception as exc:
            raise InputDataError(f"model file {path} cannot be read: {exc}") from None
        if "A" not in maps or "B" not in maps:
            raise InputDataError(f"model file {path} has no A and B extensions")
        names = COEFFICIENT_NAMES[: 3 if "C" in maps else 2]
        size = len(names)
        covariance = np.zeros((size, size, *maps["A"].shape), dtype=np.float32)
        for j, name in enumerate(names):
            covariance[j, j] = maps.get(f"SIGMA_{name}", np.full(maps["A"].shape, np.nan)) ** 2
            for k in range(j + 1, size):
                covariance[j, k] = covariance[k, j] = maps.get(f"COV_{name}{names[k]}", np.nan)
        dq = maps["MASK"].astype(np.uint32) if "MASK" in maps else None
        mask = (dq & HOT_MASK.value).astype(bool) if dq is not None else ~np.isfinite(maps["A"])
        return cls(
            maps["A"],
            maps["B"],
            mask,
            temperature_range=_range(header),
            group_temperatures=temperatures,
            group_frames=frames,
            group_leverage=leverage,
            scale_factor=float(header.get("SCALEFAC", DEFAULT_SCALE_FACTOR)),
            c_map=maps.get("C"),
            covariance=covariance,
            rms=maps.get("RMS"),
            chi2=maps.get("CHI2"),
            ngroups=maps.get("NGROUPS"),
            dq=dq,
            read_noise=maps.get("READNOISE"),
            tref=float(header["TREF"]) if "TREF" in header else None,
            **_dates(path, header),
        )


_KIND_NAMES = {
    "BIAS_A": "an a-map",
    "BIAS_B": "a b-map",
    "BIAS_MODEL": "a one-file model",
    "MASTER_BIAS": "a master bias",
    "SYNTHETIC_BIAS": "a synthetic bias frame",
    "MAE": "an error map",
    "MAPE": "an error map",
    "HELDOUT_MAE": "an error map",
}


def _check_kind(path: Path, header: fits.Header, expected: str, what: str) -> None:
    """Refuse a file of this package whose ``PRODTYPE`` says it is something else (swapped maps,
    a model given as a map); a file without ``PRODTYPE`` (made elsewhere) is taken as given."""
    kind = header.get("PRODTYPE")
    if kind is None or kind == expected:
        return
    advice = {
        "BIAS_A": "are the a-map and b-map swapped?",
        "BIAS_B": "are the a-map and b-map swapped?",
        "BIAS_MODEL": "give it alone (generate: --model; Python: BiasModel.load(path))",
    }.get(str(kind), f"give the {what} of a pipeline run (bias_model/)")
    found = _KIND_NAMES.get(str(kind), f"a {kind} product")
    raise InputDataError(f"{what} {path} is {found} (PRODTYPE = {kind}), not {_KIND_NAMES[expected]}; {advice}")


def _check_same_run(path: Path, header: fits.Header, other: Path, other_header: fits.Header) -> None:
    """Refuse files of two different runs (told apart by their ``RUNSTART`` or ``INPUTSHA``)."""
    for key in ("RUNSTART", "INPUTSHA"):
        if key in header and key in other_header and header[key] != other_header[key]:
            raise InputDataError(
                f"{path} and {other} come from different runs ({key} {header[key]} and {other_header[key]}); "
                "give the files of one run"
            )


def _is_model_file(path: Path) -> bool:
    """Whether ``path`` is a one-file model (written by :meth:`BiasModel.to_fits` under any name)."""
    try:
        return fits.getheader(path).get("PRODTYPE") == "BIAS_MODEL"
    except Exception:  # not readable as FITS: read_image says so with the path
        return False


def read_model_header(path: str | Path) -> tuple[fits.Header, list[str]]:
    """The primary header of a model file (or any product) and the names of its extensions,
    without reading any data: what ``inspect`` and ``generate --model`` check before loading.

    Astropy's warnings about a damaged file are dropped: the caller says what is missing.

    Parameters
    ----------
    path
        The FITS file.

    Returns
    -------
    header : astropy.io.fits.Header
        A copy of the primary header.
    extensions : list of str
        The names of the extensions after the primary one, in order.

    Raises
    ------
    OSError
        When the file cannot be opened; other exceptions of astropy when it is no FITS file.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fits.verify.VerifyWarning)
        with fits.open(path, memmap=False, lazy_load_hdus=False) as hdul:
            return hdul[0].header.copy(), [hdu.name for hdu in hdul[1:]]


def load_read_noise(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """Read a read-noise map: the ``READNOISE`` extension of a model file, or a 2-D image.

    Raises
    ------
    InputDataError
        When the file is missing, has no such map, or its shape differs from ``shape``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"--noise-map {path} does not exist; give bias_model/bias_model.fits of a run")
    try:
        with fits.open(path, memmap=False) as hdul:
            if "READNOISE" in hdul:
                data = np.asarray(hdul["READNOISE"].data, dtype=np.float32)
            else:
                data, _ = read_image(path, "--noise-map")
    except InputDataError:
        raise
    except Exception as exc:
        raise InputDataError(f"--noise-map {path} cannot be read: {exc}") from None
    if data.shape != tuple(shape):
        raise InputDataError(f"--noise-map {path} is {data.shape[0]}x{data.shape[1]}, the maps {shape[0]}x{shape[1]}")
    return data


def _leverage(groups: fits.FITS_rec | None) -> tuple[float, ...]:
    if groups is None or "LEVERAGE" not in groups.names:
        return ()
    values = tuple(float(h) for h in groups["LEVERAGE"])
    return () if all(np.isnan(values)) else values


def _dates(path: Path, header: fits.Header) -> dict[str, object]:
    """The model's date range and declared validity from its header (absent cards: ``None``)."""
    found: dict[str, _dt.datetime | None] = {}
    for key in (DATE_BEGIN_KEY, DATE_END_KEY, VALID_FROM_KEY, VALID_TO_KEY):
        try:
            found[key] = parse_date(header[key]) if key in header else None
        except ValueError as exc:
            raise InputDataError(f"model {path}: {key} {exc}; fix the card or remove it") from None
    begin, end = found[DATE_BEGIN_KEY], found[DATE_END_KEY]
    return {
        "date_range": (begin, end) if begin is not None and end is not None else None,
        "valid_from": found[VALID_FROM_KEY],
        "valid_to": found[VALID_TO_KEY],
    }


def _range(header: fits.Header) -> tuple[float, float] | None:
    if "TMIN" in header and "TMAX" in header:
        return float(header["TMIN"]), float(header["TMAX"])
    return None
