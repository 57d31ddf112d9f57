"""Identifier normalization: spellings of one identifier meet; different identifiers never do."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from cmohub.errors import ConfigError, VaultError
from cmohub.identity import Demographics
from cmohub.sensitive import Sensitive
from cmohub.vault.normalize import (
    SystemRegistry,
    load_systems,
    normalize_demographics,
    normalize_event,
    normalize_system,
    normalize_value,
)

CANARY = "CANARY-MRN-NORM-42"


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("urn:oid:2.16.840.1.113883.19.5", "urn:oid:2.16.840.1.113883.19.5"),
        ("URN:OID:2.16.840.1.113883.19.5", "urn:oid:2.16.840.1.113883.19.5"),
        ("  2.16.840.1.113883.19.5 ", "urn:oid:2.16.840.1.113883.19.5"),
        ("urn:cmohub:sandbox:mrn:A9990", "urn:cmohub:sandbox:mrn:A9990"),
        ("URN:CMOHUB:sandbox:mrn:A9990", "urn:cmohub:sandbox:mrn:A9990"),
        (
            "HTTPS://Sandbox.CMOHUB.invalid/fhir/sid/MRN/",
            "https://sandbox.cmohub.invalid/fhir/sid/MRN",
        ),
        ("https://sandbox.cmohub.invalid:443/mrn", "https://sandbox.cmohub.invalid/mrn"),
        ("http://hospital.example:8080/mrn", "http://hospital.example:8080/mrn"),
    ],
)
def test_system_uris_are_canonicalized(raw: str, canonical: str) -> None:
    assert normalize_system(raw) == canonical


def test_http_and_https_and_path_case_stay_distinct() -> None:
    assert normalize_system("http://h.example/mrn") != normalize_system("https://h.example/mrn")
    assert normalize_system("https://h.example/MRN") != normalize_system("https://h.example/mrn")


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "urn:oid:2.16.0840",  # leading zero
        "urn:oid:abc",
        "ftp://h.example/mrn",
        "https://h.example/mrn?x=1",
        "https://h.example/mrn#frag",
        "https://user:pw@h.example/mrn",
        "https://h.example/m rn",
        "mrn",
        "https:///nohost",
    ],
)
def test_malformed_systems_are_refused(raw: str) -> None:
    with pytest.raises(VaultError) as caught:
        normalize_system(raw)
    assert caught.value.code == "VAULT_SYSTEM_INVALID"


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("MRN-001", "MRN-001"),
        ("  MRN-001\t", "MRN-001"),
        ("MRN  001", "MRN 001"),
        ("ＭＲＮ－００１", "MRN-001"),  # full-width (NFKC)
        ("MRN\u00a0001", "MRN 001"),  # no-break space
    ],
)
def test_values_lose_only_noise(raw: str, canonical: str) -> None:
    assert normalize_value(raw) == canonical


def test_case_is_kept_unless_the_system_says_otherwise() -> None:
    assert normalize_value("abc-1") != normalize_value("ABC-1")
    assert normalize_value("abc-1", case_insensitive=True) == normalize_value(
        "ABC-1", case_insensitive=True
    )


@pytest.mark.parametrize("raw", ["", "   ", "MRN\x00001", "MRN\x07", "X" * 129, "\u200b"])
def test_malformed_values_are_refused_without_echoing_them(raw: str) -> None:
    with pytest.raises(VaultError) as caught:
        normalize_value(raw)
    assert caught.value.code == "VAULT_IDENTIFIER_INVALID"
    if raw.strip():
        assert raw.strip() not in str(caught.value)


def test_therapy_events_are_normalized_like_case_sensitive_values() -> None:
    assert normalize_event("  ENR  0001 ") == "ENR 0001"
    assert normalize_event("enr-1") != normalize_event("ENR-1")
    with pytest.raises(VaultError, match="VAULT_EVENT_INVALID"):
        normalize_event("E" * 65)


@given(st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=40))
def test_normalization_is_idempotent(text: str) -> None:
    try:
        once = normalize_value(text)
    except VaultError:
        return
    assert normalize_value(once) == once


def _reference_value(text: str, limit: int = 128) -> str | None:
    """The documented rule, spelled out: NFKC, whitespace collapsed, printable, 1..limit."""
    value = " ".join(unicodedata.normalize("NFKC", text).split())
    return value if value and value.isprintable() and len(value) <= limit else None


@given(
    st.one_of(
        # The fast path, printable ASCII, with spaces weighted so that runs of them are common.
        st.lists(st.sampled_from(" " * 3 + "Ab1-_."), max_size=140).map("".join),
        st.text(alphabet=" \t\n\x0b\x0c\r\x1c\x1f\x7fAb1-_.", max_size=140),
        st.text(alphabet=st.characters(codec="utf-8"), max_size=40),
    )
)
@example("  A  b   1 ")
@example("E" * 64)
@example(" " + "E" * 65 + " ")
@example("V" * 129)
def test_the_fast_path_for_plain_ascii_follows_the_documented_rule(text: str) -> None:
    # Values, events and their limits: what the batch path computes, or refuses.
    for normalize, limit in ((normalize_value, 128), (normalize_event, 64)):
        expected = _reference_value(text, limit)
        try:
            assert normalize(text) == expected
        except VaultError:
            assert expected is None


def test_demographics_are_compared_in_a_canonical_form() -> None:
    a = Demographics(Sensitive("O'Brien"), Sensitive("Zoë"), Sensitive("19800102"))
    b = Demographics(Sensitive("obrien "), Sensitive("ZOE"), Sensitive("1980-01-02"))
    assert normalize_demographics(a) == normalize_demographics(b)
    assert normalize_demographics(Demographics()) == {}


def test_the_default_registry_accepts_the_sandbox_and_oid_systems_only() -> None:
    registry = SystemRegistry.default()
    assert registry.policy("urn:cmohub:sandbox:mrn:A9990").system == "urn:cmohub:sandbox:mrn:A9990"
    assert registry.policy("https://sandbox.cmohub.invalid/mrn").case_insensitive is False
    assert registry.policy("2.16.840.1.113883.19.5").system == "urn:oid:2.16.840.1.113883.19.5"
    with pytest.raises(VaultError) as caught:
        registry.policy("https://hospital.example/mrn")
    assert caught.value.code == "VAULT_UNKNOWN_SYSTEM"


def test_a_systems_file_declares_systems_case_and_patterns(tmp_path: Path) -> None:
    path = tmp_path / "identifier-systems.yaml"
    path.write_text(
        "systems:\n"
        "  - uri: https://Hospital.example/mrn/\n"
        "    case_insensitive: true\n"
        "    pattern: '[a-z]{3}-[0-9]+'\n"
        "  - prefix: urn:oid:1.2.3.\n",
        encoding="utf-8",
    )
    registry = load_systems(path)
    policy = registry.policy("https://hospital.example/mrn")
    assert policy.normalize(" ABC-12 ") == "abc-12"
    with pytest.raises(VaultError) as caught:
        policy.normalize(CANARY)
    assert caught.value.code == "VAULT_IDENTIFIER_INVALID" and CANARY not in str(caught.value)
    assert registry.policy("urn:oid:1.2.3.4").system == "urn:oid:1.2.3.4"
    with pytest.raises(VaultError, match="VAULT_UNKNOWN_SYSTEM"):
        registry.policy("urn:cmohub:sandbox:mrn:A9990")  # the file replaces the defaults


@pytest.mark.parametrize(
    "text",
    [
        "systems: nope\n",
        "systems:\n  - {uri: 'https://a.example/x', prefix: 'urn:oid:'}\n",
        "systems:\n  - {uri: 'https://a.example/x', pattern: '('}\n",
        "systems:\n  - {uri: 'https://a.example/x', colour: blue}\n",
        "systems: [\n",
    ],
)
def test_a_malformed_systems_file_is_a_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "identifier-systems.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_systems(path)
    assert caught.value.code == "VAULT_SYSTEMS_INVALID"
