from __future__ import annotations

import subprocess
import sys

import pytest

from cmohub.identifiers import Coi, format_coi

COI = Coi(fin="A9993", year="26", sequence="QW3RT7")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from cmohub.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    "spelling", [str(COI), f"&/{COI}", format_coi(COI), f"&/ {format_coi(COI)}"]
)
def test_coi_check_accepts_valid_codes(spelling: str) -> None:
    result = run_cli("coi", "check", spelling)
    assert (result.returncode, result.stdout.strip()) == (0, "valid")


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("", "ID_EMPTY"),
        ("CHA9993", "ID_LENGTH"),
        (COI.body + "?", "ID_CHECK_CHARACTER"),
        (COI.body[:-1] + "?" + COI.check, "ID_CHARACTER"),
        ("x" * 100_000, "ID_LENGTH"),
        ("ÇHA999326QW3RT7K", "ID_CHARACTER"),
        (COI.body + ("A" if COI.check != "A" else "B"), "ID_CHECK_CHARACTER"),
    ],
)
def test_coi_check_prints_code_and_reason_and_exits_1(code: str, expected: str) -> None:
    result = run_cli("coi", "check", code)
    assert result.returncode == 1
    assert result.stdout.startswith(f"{expected}: ")
    assert "Traceback" not in result.stderr


def test_version_is_the_installed_distributions() -> None:
    # cmohub.__version__ is looked up lazily (DAG files import the package at parse time).
    from importlib.metadata import version

    import cmohub

    assert cmohub.__version__ == version("cmohub")
    result = run_cli("--version")
    assert (result.returncode, result.stdout.strip()) == (0, version("cmohub"))
    with pytest.raises(AttributeError):
        _ = cmohub.no_such_attribute  # type: ignore[attr-defined]
