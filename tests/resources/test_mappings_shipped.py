"""Every mapping shipped with cmohub loads, lints clean against its contract, and is named
after its file."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmohub.mapping.store import iter_mapping_files, lint_mapping_files, load_mapping_file

FILES = [Path(str(p)) for p in iter_mapping_files()]


def test_mappings_are_shipped() -> None:
    names = {p.stem for p in FILES}
    assert {"cmo-acme-batches", "master-sites"} <= names


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_mapping_lints_clean(path: Path) -> None:
    problems = lint_mapping_files([path])[str(path)]
    assert problems == [], "\n".join(map(str, problems))


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_mapping_is_named_after_its_file(path: Path) -> None:
    assert load_mapping_file(path).name == path.stem
