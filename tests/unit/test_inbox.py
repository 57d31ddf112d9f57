"""Delivery sources and feed configuration: the local inbox, completeness, checksums, options."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from cmohub.errors import ConfigError, SourceError
from cmohub.mapping.store import resource_root
from cmohub.sources.checksums import check_delivery, parse_sidecar, parse_sums, sums_line
from cmohub.sources.delivery import (
    RemoteFile,
    _feed_view,
    complete_files,
    is_temporary,
    list_complete,
    load_cmo_feeds,
    parse_cmo_feeds,
    plain_name,
)
from cmohub.sources.inbox import InboxSource


def test_the_inbox_lists_files_recursively_and_reads_within_its_limit(tmp_path: Path) -> None:
    (tmp_path / "2026-01-20").mkdir()
    (tmp_path / "2026-01-20" / "LIMS_20260120.csv.pgp").write_bytes(b"x" * 10)
    (tmp_path / "SHA256SUMS").write_text("")
    (tmp_path / "outside.txt").symlink_to("/etc/hostname")
    source = InboxSource(tmp_path)
    listed = source.list_files()
    assert sorted(f.path for f in listed) == ["2026-01-20/LIMS_20260120.csv.pgp", "SHA256SUMS"]
    listed = sorted(listed, key=lambda f: f.path)
    assert listed[0].delivered_on is not None and listed[0].delivered_on.isoformat() == "2026-01-20"
    assert source.read("2026-01-20/LIMS_20260120.csv.pgp", max_bytes=10) == b"x" * 10
    with pytest.raises(SourceError) as caught:
        source.read("2026-01-20/LIMS_20260120.csv.pgp", max_bytes=9)
    assert caught.value.code == "FILE_TOO_LARGE"
    with pytest.raises(SourceError) as caught:
        source.read("../../etc/passwd", max_bytes=100)
    assert caught.value.code == "SOURCE_PATH_INVALID"
    assert InboxSource(tmp_path / "missing").list_files() == []


@pytest.mark.parametrize(
    ("name", "temporary"),
    [
        ("LIMS.csv.pgp", False),
        ("LIMS.csv.pgp.part", True),
        (".LIMS.csv.pgp.swp", True),
        ("LIMS.csv.pgp.filepart", True),
        ("LIMS.csv.pgp.tmp", True),
        ("2026-01-20/LIMS.csv.pgp.uploading", True),
    ],
)
def test_temporary_upload_names_are_recognised(name: str, temporary: bool) -> None:
    assert is_temporary(name) is temporary


def test_a_file_counts_as_complete_only_when_two_listings_agree() -> None:
    first = [
        RemoteFile("a.pgp", 10, 1.0),
        RemoteFile("b.pgp", 10, 1.0),
        RemoteFile("c.part", 5, 1.0),
    ]
    second = [
        RemoteFile("a.pgp", 10, 1.0),
        RemoteFile("b.pgp", 20, 2.0),
        RemoteFile("c.part", 5, 1.0),
    ]
    assert [f.path for f in complete_files(first, second)] == ["a.pgp"]


class Growing:
    """A source whose one file grows until ``stops`` listings have been taken."""

    def __init__(self, stops: int) -> None:
        self.size = 100
        self.listings = 0
        self.stops = stops

    def list_files(self) -> list[RemoteFile]:
        self.listings += 1
        if self.listings < self.stops:
            self.size += 100
        return [RemoteFile("BPR_BOR2600001.xml.pgp", self.size, float(self.size))]

    def read(self, path: str, *, max_bytes: int) -> bytes:
        return b""

    def close(self) -> None:
        return None


def test_a_file_whose_size_still_changes_is_left_for_the_next_run() -> None:
    waited: list[float] = []
    growing = Growing(stops=3)
    assert list_complete(growing, settle_seconds=2.0, sleep=waited.append) == []
    assert waited == [2.0]
    assert len(list_complete(growing, settle_seconds=2.0, sleep=waited.append)) == 1


def test_checksum_files_in_both_formats() -> None:
    digest = "ab" * 32
    assert parse_sums(f"{digest}  LIMS.csv.pgp\n{digest.upper()} *EM.csv.pgp\njunk\n") == {
        "LIMS.csv.pgp": digest,
        "EM.csv.pgp": digest,
    }
    assert parse_sums(f"SHA256 (RELEASE.csv.pgp) = {digest}\n") == {"RELEASE.csv.pgp": digest}
    assert parse_sidecar(f"{digest}\n", "LIMS.csv.pgp") == digest


def _check(convention: str, files: dict[str, bytes], name: str) -> str:
    listing = {path: RemoteFile(path, len(data), 1.0) for path, data in files.items()}
    return check_delivery(
        convention,
        listing[name],
        files[name],
        listing=listing,
        read=lambda path: files[path],
    ).status


def test_sidecar_and_manifest_conventions() -> None:
    data = b"ciphertext"
    name = "2026-01-20/LIMS.csv.pgp"
    assert _check("none", {name: data}, name) == "not_required"
    assert _check("sidecar", {name: data}, name) == "pending"
    good = sums_line("LIMS.csv.pgp", data).encode()
    assert _check("sidecar", {name: data, f"{name}.sha256": good}, name) == "ok"
    bad = sums_line("LIMS.csv.pgp", b"other").encode()
    assert _check("sidecar", {name: data, f"{name}.sha256": bad}, name) == "mismatch"
    manifest = "2026-01-20/SHA256SUMS"
    assert _check("manifest", {name: data}, name) == "pending"
    assert _check("manifest", {name: data, manifest: b""}, name) == "pending"
    assert _check("manifest", {name: data, manifest: good}, name) == "ok"
    assert _check("manifest", {name: data, manifest: bad}, name) == "mismatch"


def test_the_shipped_cmo_feeds_and_their_routes() -> None:
    feeds = load_cmo_feeds()
    assert set(feeds) == {"cmo_acme", "cmo_borealis"}
    borealis = feeds["cmo_borealis"]
    assert borealis.options.cmo == "A9997"
    routes = {r.mapping for r in borealis.routes_for("2026-02-04/BPR_BOR2600019.xml.pgp")}
    assert routes == {
        "cmo-borealis-batches",
        "cmo-borealis-batch-steps",
        "cmo-borealis-materials",
        "cmo-borealis-deviations",
    }
    assert [r.mapping for r in feeds["cmo_acme"].routes_for("ACME_LIMS_20260120.csv.gpg")] == [
        "cmo-acme-qc-results"
    ]
    assert plain_name("x/ACME_EM_1.csv.asc") == "ACME_EM_1.csv"
    assert feeds["cmo_acme"].connection_id == "cmohub_sftp_a9996"


def _doc(name: str, **options: Any) -> tuple[str, dict[str, Any]]:
    return (
        f"{name}.yaml",
        {
            "mapping": name,
            "produces": {"dataset": "manufacturing.batch"},
            "source": {"format": "csv", "options": {"feed": "cmo_x", **options}},
        },
    )


@pytest.mark.parametrize(
    ("documents", "code"),
    [
        ([_doc("a", file_pattern="A_*", cmo="A9990", transport="ftp")], "CMO_FEED_INVALID"),
        ([_doc("a", file_pattern="A_*", cmo="A9990", sender_fingerprint="AB")],
         "CMO_FEED_INVALID"),
        ([_doc("a", file_pattern="A_*", cmo="A9990", host="x")], "CMO_FEED_OPTION_UNKNOWN"),
        ([_doc("a", cmo="A9990")], "CMO_FEED_INVALID"),
        ([_doc("a", file_pattern="A_*", cmo="A9990"), _doc("b", file_pattern="B_*", cmo="A9991")],
         "CMO_FEED_CONFLICT"),
        ([_doc("a", file_pattern="A_*")], "CMO_FEED_INVALID"),
    ],
    ids=["transport", "short-fingerprint", "unknown-option", "no-pattern", "conflict", "no-cmo"],
)  # fmt: skip
def test_feed_options_are_validated_with_clear_codes(
    documents: list[tuple[str, Any]], code: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_cmo_feeds(documents)
    assert caught.value.code == code


def test_feed_options_given_once_apply_to_every_mapping_of_the_feed() -> None:
    feeds = parse_cmo_feeds(
        [
            _doc("a", file_pattern="A_*", cmo="A9990", checksums="sidecar", max_bytes=1024),
            _doc("b", file_pattern="B_*"),
        ]
    )
    feed = feeds["cmo_x"]
    assert (feed.options.checksums, feed.options.max_bytes) == ("sidecar", 1024)
    assert [r.mapping for r in feed.routes] == ["a", "b"]


# --- feed discovery at DAG parse time reads only what configures a feed -------------------------

FEED_PARTS = ("mapping", "produces", "source")


def test_the_feed_view_of_every_shipped_mapping_is_what_a_full_parse_reads() -> None:
    documents = [p for p in resource_root("mappings").iterdir() if p.name.endswith(".yaml")]
    assert len(documents) > 20
    for item in documents:
        text = item.read_text(encoding="utf-8")
        full = yaml.safe_load(text)
        assert _feed_view(text) == {k: full[k] for k in FEED_PARTS if k in full}, item.name


@pytest.mark.parametrize(
    "text",
    [
        # an anchor outside the parts read, used inside them
        "fields: &opts {feed: cmo_x}\nsource:\n  options: *opts\nmapping: m\n",
        # flow style at the top level
        "{mapping: m, source: {options: {feed: cmo_x}}, fields: []}\n",
        # a document marker and a directive
        "%YAML 1.2\n---\nmapping: m\nsource:\n  options: {feed: cmo_x}\n",
        # a quoted top-level key
        '"mapping": m\nsource:\n  options: {feed: cmo_x}\nfields: [1]\n',
        # a flow mapping whose continuation starts at column 0
        "mapping: m\nsource: {options: {feed: cmo_x},\nformat: csv}\nfields: [1]\n",
    ],
    ids=["alias", "flow", "directive", "quoted-key", "flow-continued"],
)
def test_a_mapping_written_another_way_is_parsed_whole(text: str) -> None:
    full = yaml.safe_load(text)
    view = _feed_view(text)
    assert {k: view[k] for k in FEED_PARTS if k in view} == {
        k: full[k] for k in FEED_PARTS if k in full
    }
