"""PSI maths of ml.evaluate.drift against values computed by hand."""

from __future__ import annotations

import math

import pytest

from ml.evaluate.drift import (
    EPSILON,
    OTHER,
    WITHHELD,
    CategoricalBins,
    DriftReference,
    NumericBins,
    build_reference,
    header_signals,
    psi,
    window_psi,
)


def test_psi_of_identical_shares_is_zero() -> None:
    assert psi([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == 0.0


def test_psi_two_bins_by_hand() -> None:
    # (0.25 - 0.5) ln(0.25/0.5) + (0.75 - 0.5) ln(0.75/0.5) = 0.25 ln 2 + 0.25 ln 1.5
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.274653, abs=1e-6)


def test_empty_bin_takes_epsilon() -> None:
    # the third bin is empty in the reference: its share is EPSILON = 1e-4
    # 0 + 0.25 ln 2 + (0.25 - 1e-4) ln(0.25 / 1e-4) = 0.173287 + 1.955229
    assert EPSILON == 1e-4
    assert psi([0.5, 0.5, 0.0], [0.5, 0.25, 0.25]) == pytest.approx(2.128516, abs=1e-6)


def test_psi_refuses_mismatched_bins() -> None:
    with pytest.raises(ValueError):
        psi([0.5, 0.5], [1.0])


def test_numeric_bins_are_right_closed_and_open_ended() -> None:
    bins = NumericBins(edges=(1.0, 2.0), shares=(0.25, 0.5, 0.25))
    # (-inf, 1], (1, 2], (2, inf); NaN is left out
    assert bins.counts([-5.0, 1.0, 1.5, 2.0, 2.01, 99.0, math.nan]) == [2, 2, 2]


def test_categorical_other_bin() -> None:
    bins = CategoricalBins(categories=("B30f", "FC13"), shares=(0.5, 0.5, 0.0))
    assert bins.counts(["B30f", "FC13", "FC13", "LUNG", "D45"]) == [1, 2, 2]


def test_build_reference_probability_bins_and_deciles() -> None:
    ref = build_reference(
        {"probability": [0.05, 0.15, 0.95, 0.99], "slice_thickness_mm": [2.5, 2.5, 2.5, None]},
        {"kernel": ["B30f", "B30f", "FC13", None]},
        fitted_on="test",
    )
    p = ref.numeric["probability"]
    assert p.edges == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    assert p.shares == (0.25, 0.25, 0, 0, 0, 0, 0, 0, 0, 0.5)
    # a constant signal: its edges collapse to one, two bins
    st = ref.numeric["slice_thickness_mm"]
    assert st.edges == (2.5,)
    assert st.shares == (1.0, 0.0)
    k = ref.categorical["kernel"]
    assert k.categories == ("B30f", "FC13")
    assert k.shares == pytest.approx((2 / 3, 1 / 3, 0.0))
    assert ref.n == 4
    assert DriftReference.from_dict(ref.to_dict()) == ref


def test_window_psi_by_hand() -> None:
    ref = DriftReference(
        fitted_on="test",
        n=4,
        numeric={"slice_thickness_mm": NumericBins(edges=(2.5,), shares=(1.0, 0.0))},
        categorical={"kernel": CategoricalBins(categories=("B30f",), shares=(1.0, 0.0))},
    )
    # same distribution: 0
    same = window_psi(ref, {"slice_thickness_mm": [1.0, 2.5]}, {"kernel": ["B30f"]})
    assert same == {"slice_thickness_mm": 0.0, "kernel": 0.0}
    # half the window thick-slice (5 mm), half an unknown kernel:
    # (0.5 - 1) ln(0.5) + (0.5 - 1e-4) ln(0.5 / 1e-4) = 0.346574 + 4.257745
    shifted = window_psi(ref, {"slice_thickness_mm": [2.0, 5.0]}, {"kernel": ["B30f", "XYZ"]})
    expected = 0.5 * math.log(2) + (0.5 - 1e-4) * math.log(0.5 / 1e-4)
    assert shifted["slice_thickness_mm"] == pytest.approx(expected, abs=1e-9)
    assert shifted["kernel"] == pytest.approx(expected, abs=1e-9)
    assert expected == pytest.approx(4.604318, abs=1e-6)
    # too few values: no PSI
    assert window_psi(ref, {"slice_thickness_mm": [5.0]}, {}, min_values=2) == {}
    assert OTHER == "other"


def test_header_signals_withhold_identifiers_and_keep_units() -> None:
    summary = {
        "slice_thickness_mm": 2.5,
        "coverage_mm": 300.0,
        "kernel": " B30f ",
        "manufacturer": "ACME DOE",
    }
    h = header_signals(summary, ["DOE^JOHN", "DOE", ""])
    assert h == {"slice_thickness_mm": 2.5, "coverage_mm": 300.0, "kernel": "B30f", "manufacturer": WITHHELD}
    empty = header_signals({"slice_thickness_mm": None, "kernel": "", "manufacturer": "x" * 100}, [])
    assert empty["slice_thickness_mm"] is None and empty["coverage_mm"] is None and empty["kernel"] is None
    assert empty["manufacturer"] == "x" * 64
