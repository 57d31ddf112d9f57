from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from cmohub import errors
from cmohub.identity import SubjectIdentity
from cmohub.log import (
    JsonFormatter,
    RedactionFilter,
    add_classified_fields,
    get_logger,
    redact_text,
)
from cmohub.sensitive import Sensitive
from cmohub.settings import load_settings

CANARY = "CANARY-MRN-7F3K9Q"


def all_error_classes() -> list[type[errors.HubError]]:
    found: list[type[errors.HubError]] = []
    todo: list[type[errors.HubError]] = [errors.HubError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def test_every_error_class_is_transient_or_terminal_with_a_unique_code() -> None:
    classes = [c for c in all_error_classes() if c is not errors.HubError]
    codes = [c.code for c in classes]
    assert len(codes) == len(set(codes)), "two error classes share a code"
    for cls in classes:
        assert issubclass(cls, (errors.Transient, errors.Terminal)), cls
        assert cls.code.isupper() and " " not in cls.code


def test_retryability_follows_the_markers() -> None:
    assert errors.is_retryable(errors.StoreUnavailable("vault database is down"))
    assert errors.is_retryable(errors.SourceRateLimited("429", retry_after_seconds=3))
    assert not errors.is_retryable(errors.ParseError("bad"))
    assert not errors.is_retryable(ValueError("not ours"))


def test_error_text_names_code_and_location() -> None:
    error = errors.ParseError(
        "segment PID is truncated", code="PARSE_HL7_TRUNCATED", where="line 3"
    )
    assert str(error) == "PARSE_HL7_TRUNCATED: segment PID is truncated (at line 3)"
    assert error.to_dict()["code"] == "PARSE_HL7_TRUNCATED"
    assert errors.ParseError.code == "PARSE_INVALID"  # the class default is untouched


def test_sensitive_never_prints_and_cannot_be_pickled() -> None:
    import pickle

    secret = Sensitive(CANARY)
    identity = SubjectIdentity(system="urn:mrn", value=secret)
    for text in (repr(secret), str(secret), f"{secret}", f"{secret!r}", repr(identity)):
        assert CANARY not in text
    assert secret.reveal() == CANARY
    with pytest.raises(TypeError):
        pickle.dumps(secret)


def _capture(logger: logging.Logger) -> list[str]:
    lines: list[str] = []

    class ListHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = ListHandler()
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    return lines


def test_redaction_filter_covers_args_extras_message_pairs_and_tracebacks() -> None:
    logger = get_logger("test.redaction")
    lines = _capture(logger)
    logger.info("tokenized %s", Sensitive(CANARY))
    logger.info("record %s", {"mrn": CANARY, "count": 3})
    logger.info("bad record mrn=%s in file %s", CANARY, "batch.csv")
    logger.info('payload {"birthDate": "%s"}', CANARY)
    logger.info("extra fields", extra={"mrn": CANARY, "file_id": "f-1"})
    try:
        raise RuntimeError(f"email={CANARY}")
    except RuntimeError:
        logger.exception("failed")
    joined = "\n".join(lines)
    assert CANARY not in joined
    assert "batch.csv" in joined and "f-1" in joined and "'count': 3" in joined


def test_contract_classified_names_can_be_added() -> None:
    add_classified_fields({"study_subject_code"})
    assert CANARY not in redact_text(f"study_subject_code={CANARY} rows=4")
    assert "rows=4" in redact_text(f"study_subject_code={CANARY} rows=4")


def test_filter_is_safe_on_plain_records() -> None:
    record = logging.LogRecord("cmohub.x", logging.INFO, __file__, 1, "rows=%d", (5,), None)
    assert RedactionFilter().filter(record)
    assert record.getMessage() == "rows=5"


def test_settings_defaults_and_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CMOHUB_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings.home_dir == tmp_path / ".cmohub"
    assert settings.vault_database_url == f"sqlite:///{tmp_path / '.cmohub' / 'vault.sqlite'}"
    assert settings.lake_root == str(tmp_path / ".cmohub" / "lake")
    monkeypatch.setenv("CMOHUB_HOME", str(tmp_path / "h"))
    monkeypatch.setenv("CMOHUB_VAULT_URL", "postgresql+psycopg://u:s3cret@127.0.0.1/test")
    settings = load_settings()
    assert settings.home_dir == tmp_path / "h"
    assert "s3cret" not in repr(settings)
    assert settings.vault_database_url.endswith("/test")


def test_settings_errors_do_not_echo_values(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    monkeypatch.setenv("CMOHUB_LOG_JSON", CANARY)
    with pytest.raises(ValidationError) as caught:
        load_settings()
    assert CANARY not in str(caught.value)


def test_json_formatter_writes_utc_with_offset() -> None:
    record = logging.LogRecord("cmohub.x", logging.INFO, __file__, 1, "ok", None, None)
    data = json.loads(JsonFormatter().format(record))
    assert data["time"].endswith("+00:00")
