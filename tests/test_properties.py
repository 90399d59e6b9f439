"""Property tests (hypothesis) of the fit, the grouping and header parsing."""

from __future__ import annotations

import math

import numpy as np
from astropy.io import fits
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bias_pipeline.errors import FrameReadError
from bias_pipeline.fitting import fit_polynomial
from bias_pipeline.frames import lookup_number
from bias_pipeline.steps.step2_generate_master_bias_by_temp import temperature_clusters

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
temperatures = st.lists(st.floats(-40, 60, allow_nan=False), min_size=2, max_size=8)
weights_for = st.floats(0.5, 50.0)


def _fit(temps, weights, maps):
    return fit_polynomial(temps, weights, lambda k: maps[k]).coefficients


def _draw_inputs(data, n, shape):
    """Weights and values for ``n`` inputs, and the values as constant maps of ``shape``."""
    weights = data.draw(st.lists(weights_for, min_size=n, max_size=n))
    values = data.draw(st.lists(st.floats(-1000, 1000), min_size=n, max_size=n))
    return weights, values, [np.full(shape, v) for v in values]


@SETTINGS
@given(temperatures, st.floats(-2000, 5000), st.floats(-20, 20), st.data())
def test_fit_is_exact_on_noiseless_lines(temps, a, b, data):
    assume(np.ptp(temps) > 0.5)
    weights = data.draw(st.lists(weights_for, min_size=len(temps), max_size=len(temps)))
    maps = [np.full((2, 3), a + b * t) for t in temps]
    coefficients = _fit(temps, weights, maps)
    np.testing.assert_allclose(coefficients[1], b, atol=1e-7 * (1 + abs(a)))
    np.testing.assert_allclose(coefficients[0], a, atol=1e-6 * (1 + abs(a)))


@SETTINGS
@given(temperatures, st.data())
def test_fit_is_weighted_least_squares_and_ignores_order(temps, data):
    assume(np.ptp(temps) > 0.5)
    n = len(temps)
    weights, values, maps = _draw_inputs(data, n, (1, 2))
    coefficients = _fit(temps, weights, maps)[:, 0, 0]
    slope, intercept = np.polyfit(temps, values, 1, w=np.sqrt(weights))
    np.testing.assert_allclose(coefficients, [intercept, slope], rtol=1e-6, atol=1e-6)
    order = data.draw(st.permutations(range(n)))
    shuffled = _fit([temps[k] for k in order], [weights[k] for k in order], [maps[k] for k in order])
    np.testing.assert_allclose(shuffled[:, 0, 0], coefficients, rtol=1e-9, atol=1e-9)


@SETTINGS
@given(temperatures, st.data())
def test_splitting_an_input_in_two_changes_nothing(temps, data):
    """A master of weight w at T equals two masters at T with weights summing to w."""
    assume(np.ptp(temps) > 0.5)
    weights, _, maps = _draw_inputs(data, len(temps), (1, 1))
    share = data.draw(st.floats(0.1, 0.9))
    whole = _fit(temps, weights, maps)
    split = _fit([*temps, temps[0]], [weights[0] * share, *weights[1:], weights[0] * (1 - share)], [*maps, maps[0]])
    np.testing.assert_allclose(split, whole, rtol=1e-7, atol=1e-7)


@SETTINGS
@given(st.lists(st.floats(-50, 50, allow_nan=False), min_size=1, max_size=40), st.floats(0.05, 2.0), st.randoms())
def test_grouping_ignores_order_and_keeps_groups_narrow(temps, width, random):
    labels = temperature_clusters(temps, width)
    groups = {k: sorted(t for t, g in zip(temps, labels, strict=True) if g == k) for k in set(labels)}
    assert all(members[-1] - members[0] <= width + 1e-9 for members in groups.values())
    order = list(range(len(temps)))
    random.shuffle(order)
    shuffled = temperature_clusters([temps[k] for k in order], width)
    # The same partition of the values, whatever the order they came in.
    partition = sorted(tuple(v) for v in groups.values())
    again = {k: sorted(temps[order[i]] for i, g in enumerate(shuffled) if g == k) for k in set(shuffled)}
    assert sorted(tuple(v) for v in again.values()) == partition


header_values = st.one_of(
    st.text(max_size=60),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**62), 2**62),
    st.booleans(),
    st.just(None),
    st.complex_numbers(allow_nan=False, allow_infinity=False),
)


def _expected_number(stored: object) -> float | None:
    """The number a header value stands for, or ``None`` when it stands for none (a flag, a
    complex number, text that is no number, an infinite or NaN value)."""
    if isinstance(stored, bool) or not isinstance(stored, (int, float, str)):
        return None
    try:
        number = float(stored)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _check_parse(header: fits.Header, keys: list[str]) -> None:
    """The parsed value is the header's value, or the error names the keyword that holds it."""
    try:
        stored = header["TEMP"]
        readable = True
    except Exception:  # a card astropy cannot read: the pipeline must still give its own error
        stored, readable = None, False
    expected = _expected_number(stored)
    try:
        number, key = lookup_number([header], keys, "temperature")
    except FrameReadError as exc:
        # The keyword that holds the value; a card astropy cannot read counts as absent.
        if readable:
            assert str(exc).startswith("temperature keyword TEMP holds "), str(exc)
        else:
            assert str(exc) == f"no temperature keyword in the header (looked for {', '.join(keys)})"
        assert expected is None, (stored, str(exc))
    else:
        assert key == "TEMP"
        assert expected is not None and number == expected, (stored, number)


@SETTINGS
@given(header_values)
def test_header_values_give_their_number_or_an_error_naming_the_key(value):
    header = fits.Header()
    try:
        header["TEMP"] = value
    except Exception:  # astropy refuses to store it: nothing to parse
        assume(False)
    _check_parse(header, ["TEMPERATURE", "TEMP"])


@SETTINGS
@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=70))
def test_hand_typed_cards_give_their_number_or_an_error_naming_the_key(text):
    """Whatever someone typed after ``TEMP    = ``, parsing ends in the number astropy reads
    there or our error naming the keyword."""
    image = f"TEMP    = {text}"[:80].ljust(80) + "END".ljust(80)
    try:
        header = fits.Header.fromstring(image)
    except Exception:
        assume(False)
    _check_parse(header, ["TEMP"])


@SETTINGS
@given(st.floats(-300, 300, allow_nan=False), st.sampled_from(["TEMPERATURE", "TEMP", "CCD-TEMP"]))
def test_a_number_comes_back_from_whichever_alias_holds_it(value, key):
    header = fits.Header()
    header[f"HIERARCH {key}" if len(key) > 8 else key] = value
    number, found = lookup_number([header], ["TEMPERATURE", "TEMP", "CCD-TEMP"], "temperature")
    assert (number, found) == (value, key)
