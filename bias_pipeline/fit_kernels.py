"""Step 3's compiled kernels: the per-pixel polynomial fit of one row block in one pass.

The fit is a fixed linear smoother (:func:`~bias_pipeline.fitting.design`): every pixel's
coefficients are ``smoother @ y`` over its inputs ``y`` (masters or frames). A kernel here takes
one block of rows of every input, already in memory, and writes that block's coefficients,
weighted residual sum of squares and residual rms (and which pixels reach the ADC maximum)
into the caller's float32 maps, so the inputs are read once, a block at a time, instead of
twice as whole frames.

Each kernel does the arithmetic of the numpy reference,
:func:`~bias_pipeline.fitting.fit_polynomial`, in the same order and the same types: the
coefficient sums in float64 (inputs in ascending order), rounded to float32, the residuals
from the float32 coefficients by Horner's rule in float32, their squares summed in float32.
The results agree with the reference to float32 rounding (in practice bit for bit; the tests
compare the two).

The numpy reference path (``BIAS_PIPELINE_KERNELS=numpy``, or no numba) is today's
whole-frame code in :mod:`bias_pipeline.fitting` and :mod:`bias_pipeline.steps.step3_fit_bias_model`;
these kernels run only when :func:`~bias_pipeline.compiled.engine` is ``"numba"``.
"""

from __future__ import annotations

import numpy as np

from .compiled import kernel

__all__ = ["fit_frame_rows", "fit_rows", "pool_noise_rows", "sum_counts_rows"]


@kernel
def _fit_one_row(
    values: np.ndarray,
    smoother: np.ndarray,
    temperatures: np.ndarray,
    weights: np.ndarray,
    accumulator: np.ndarray,
    coefficients: np.ndarray,
    squares: np.ndarray,
    weighted: np.ndarray,
) -> None:
    """One row: ``values`` (K, columns) float32 -> float32 ``coefficients`` (P, columns),
    ``squares`` (sum r^2) and ``weighted`` (sum w r^2), as the reference computes them."""
    inputs, columns = values.shape
    terms = smoother.shape[0]
    accumulator[:] = 0.0
    for k in range(inputs):
        for p in range(terms):
            factor = smoother[p, k]
            for j in range(columns):
                accumulator[p, j] += factor * values[k, j]  # float64, inputs in order
    for p in range(terms):
        for j in range(columns):
            coefficients[p, j] = np.float32(accumulator[p, j])
    squares[:] = 0.0
    weighted[:] = 0.0
    for k in range(inputs):
        t = temperatures[k]
        w = weights[k]
        for j in range(columns):
            model = coefficients[terms - 1, j]
            for p in range(terms - 2, -1, -1):
                model = model * t + coefficients[p, j]  # Horner in float32, as evaluate_polynomial
            residual = values[k, j] - model
            square = residual * residual
            squares[j] += square
            weighted[j] += square * w


@kernel
def _store_row(i, row_coefficients, squares, weighted, count, coefficients, residual_sum_sq, rms):  # pragma: no cover
    """Row ``i`` of a fit's results from :func:`_fit_one_row`'s row buffers."""
    for j in range(row_coefficients.shape[1]):
        for p in range(row_coefficients.shape[0]):
            coefficients[p, i, j] = row_coefficients[p, j]
        residual_sum_sq[i, j] = weighted[j]
        rms[i, j] = np.sqrt(squares[j] / count)


@kernel
def fit_rows(
    stack: np.ndarray,
    smoother: np.ndarray,
    temperatures: np.ndarray,
    weights: np.ndarray,
    level: np.float32,
    coefficients: np.ndarray,
    residual_sum_sq: np.ndarray,
    rms: np.ndarray,
    saturated: np.ndarray,
) -> None:
    """Fit one row block of ``K`` inputs (masters).

    Parameters
    ----------
    stack
        ``(K, rows, columns)`` float32: the block's rows of every input.
    smoother
        ``(P, K)`` float64 (:func:`~bias_pipeline.fitting.design`).
    temperatures, weights
        ``(K,)`` float32: each input's temperature [deg C] and weight.
    level
        float32: a value at or above it is saturated.
    coefficients
        ``(P, rows, columns)`` float32, filled.
    residual_sum_sq, rms
        ``(rows, columns)`` float32, filled: ``sum w r^2`` and ``sqrt(mean r^2)``.
    saturated
        ``(rows, columns)`` bool, set where an input reaches ``level`` (never cleared).
    """
    inputs, rows, columns = stack.shape
    terms = smoother.shape[0]
    accumulator = np.empty((terms, columns), dtype=np.float64)
    row_coefficients = np.empty((terms, columns), dtype=np.float32)
    squares = np.empty(columns, dtype=np.float32)
    weighted = np.empty(columns, dtype=np.float32)
    count = np.float32(inputs)
    for i in range(rows):
        values = stack[:, i, :]
        for k in range(inputs):
            for j in range(columns):
                if values[k, j] >= level:
                    saturated[i, j] = True
        _fit_one_row(values, smoother, temperatures, weights, accumulator, row_coefficients, squares, weighted)
        _store_row(i, row_coefficients, squares, weighted, count, coefficients, residual_sum_sq, rms)


@kernel
def fit_frame_rows(
    raw: np.ndarray,
    factor: np.float32,
    group_of: np.ndarray,
    references: np.ndarray,
    threshold: np.ndarray,
    smoother: np.ndarray,
    temperatures: np.ndarray,
    weights: np.ndarray,
    level: np.float32,
    coefficients: np.ndarray,
    residual_sum_sq: np.ndarray,
    rms: np.ndarray,
    saturated: np.ndarray,
) -> None:
    """Fit one row block of ``K`` frames (``--fit-on frames``), each first put in 16-bit ADU
    (``raw * factor`` in float32) and its cosmic rays replaced by its master's value: a value
    further than ``threshold`` from ``references[group_of[k]]`` takes that value. Saturation is
    judged after the replacement, as the reference does.

    Parameters
    ----------
    raw
        ``(K, rows, columns)`` uint16 or float32: the frames' stored values.
    factor
        float32 stored-to-ADU factor.
    group_of
        ``(K,)`` int64: the row of ``references`` (the master) of each frame.
    references
        ``(G, rows, columns)`` float32: the block's rows of the masters.
    threshold
        ``(rows, columns)`` float32: the largest deviation from the master kept.
    smoother, temperatures, weights, level, coefficients, residual_sum_sq, rms, saturated
        As :func:`fit_rows`.
    """
    inputs, rows, columns = raw.shape
    terms = smoother.shape[0]
    values = np.empty((inputs, columns), dtype=np.float32)
    accumulator = np.empty((terms, columns), dtype=np.float64)
    row_coefficients = np.empty((terms, columns), dtype=np.float32)
    squares = np.empty(columns, dtype=np.float32)
    weighted = np.empty(columns, dtype=np.float32)
    count = np.float32(inputs)
    for i in range(rows):
        for k in range(inputs):
            g = group_of[k]
            for j in range(columns):
                value = np.float32(raw[k, i, j]) * factor
                reference = references[g, i, j]
                if abs(value - reference) > threshold[i, j]:
                    value = reference
                if value >= level:
                    saturated[i, j] = True
                values[k, j] = value
        _fit_one_row(values, smoother, temperatures, weights, accumulator, row_coefficients, squares, weighted)
        _store_row(i, row_coefficients, squares, weighted, count, coefficients, residual_sum_sq, rms)


@kernel
def pool_noise_rows(noise: np.ndarray, dof: np.ndarray, total: np.ndarray) -> None:
    """Add ``dof[m] * noise[m]^2`` over the masters ``m`` into ``total`` (float32, in order;
    NaN counts as 0 and infinities as the largest float32, as :func:`numpy.nan_to_num`).

    Parameters
    ----------
    noise
        ``(M, rows, columns)`` float32: the block's rows of the masters' ``NOISE`` maps.
    dof
        ``(M,)`` float32: frames minus one of each master.
    total
        ``(rows, columns)`` float32, filled.
    """
    masters, rows, columns = noise.shape
    largest = np.float32(np.finfo(np.float32).max)
    for i in range(rows):
        for j in range(columns):
            total[i, j] = 0.0
        for m in range(masters):
            d = dof[m]
            for j in range(columns):
                value = noise[m, i, j]
                if np.isnan(value):
                    value = np.float32(0.0)
                elif value > largest:
                    value = largest
                elif value < -largest:
                    value = -largest
                total[i, j] += d * value * value


@kernel
def sum_counts_rows(counts: np.ndarray, total: np.ndarray) -> None:
    """``total`` (int32, ``(rows, columns)``) = the sum over ``counts`` (``(M, rows, columns)``
    integers: the masters' ``NUSED``)."""
    masters, rows, columns = counts.shape
    for i in range(rows):
        for j in range(columns):
            s = 0
            for m in range(masters):
                s += counts[m, i, j]
            total[i, j] = s
