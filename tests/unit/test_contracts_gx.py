"""The hub's custom expectations agree with the identifier and timestamp rules they stand for."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from cmohub.contracts.gx import isbt_check_characters_valid, timestamps_aware
from cmohub.identifiers import MOD37_ALPHABET, Coi, Din, validate_coi, validate_din

ALPHABET = MOD37_ALPHABET[:36]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.builds(
                lambda fin, seq: str(Coi(f"A999{fin}", "26", seq)),
                st.integers(0, 9),
                st.text(ALPHABET, min_size=6, max_size=6),
            ),
            st.text(MOD37_ALPHABET + "ab -&/", min_size=0, max_size=20),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_vectorized_coi_check_agrees_with_parse_coi_on_data_form(values: list[str]) -> None:
    got = isbt_check_characters_valid(pd.Series(values, dtype="str"), identifier="coi").tolist()
    # The vectorized check accepts only the 16-character data form (the pattern check enforces
    # the rest); on that form it must agree with the reference implementation.
    expected = [len(v) == 16 and v == v.upper() and validate_coi(v) is None for v in values]
    assert got == expected


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 9), st.integers(0, 999_999), st.sampled_from(list(MOD37_ALPHABET)))
def test_vectorized_din_check_agrees_with_parse_din(fin: int, number: int, check: str) -> None:
    body = Din(f"A999{fin}", "26", f"{number:06d}").body
    candidate = body + check
    got = isbt_check_characters_valid(pd.Series([candidate]), identifier="din").tolist()
    assert got == [validate_din(candidate) is None]


def test_missing_values_are_not_valid_identifiers() -> None:
    values = pd.Series([None, "", str(Coi("A9990", "26", "AB12C3"))], dtype="str")
    assert isbt_check_characters_valid(values, identifier="coi").tolist() == [False, False, True]


def test_timezone_awareness_reads_text_datetimes_and_dtypes() -> None:
    text = pd.Series(["2026-01-01T10:00:00+01:00", "2026-01-01T10:00:00Z", "2026-01-01T10:00:00"])
    assert timestamps_aware(text).tolist() == [True, True, False]
    objects = pd.Series([datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 1)], dtype=object)  # noqa: DTZ001
    assert timestamps_aware(objects).tolist() == [True, False]
    assert timestamps_aware(pd.Series(pd.to_datetime(["2026-01-01"]))).tolist() == [False]
    assert timestamps_aware(pd.Series(pd.to_datetime(["2026-01-01"], utc=True))).tolist() == [True]
