"""Key providers: private key files, environment secrets, clear errors when keys are wrong."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from cmohub.errors import ConfigError
from cmohub.vault.keys import EnvKeyProvider, FileKeyProvider, KeyPurpose, MemoryKeyProvider
from cmohub.vault.roles import load_roles, parse_roles, roles_template


def test_key_files_are_created_private_in_a_private_folder(tmp_path: Path) -> None:
    provider = FileKeyProvider(tmp_path / "keys")
    old_umask = os.umask(0o000)  # even a permissive umask must not widen the key file
    try:
        assert provider.create(KeyPurpose.INDEX) == 1
        assert provider.create(KeyPurpose.INDEX) == 2
    finally:
        os.umask(old_umask)
    path = provider.path(KeyPurpose.INDEX, 1)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    assert provider.versions(KeyPurpose.INDEX) == [1, 2]
    assert provider.versions(KeyPurpose.KEK) == []
    key = provider.load(KeyPurpose.INDEX, 1)
    assert len(key) == 32 and key != provider.load(KeyPurpose.INDEX, 2)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_group_or_world_readable_key_files_are_refused(tmp_path: Path, mode: int) -> None:
    provider = FileKeyProvider(tmp_path)
    provider.create(KeyPurpose.KEK)
    path = provider.path(KeyPurpose.KEK, 1)
    path.chmod(mode)
    with pytest.raises(ConfigError) as caught:
        provider.load(KeyPurpose.KEK, 1)
    assert caught.value.code == "VAULT_KEY_PERMISSIONS"
    assert "chmod 600" in caught.value.message


def test_missing_key_files_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        FileKeyProvider(tmp_path).load(KeyPurpose.AUDIT, 3)
    assert caught.value.code == "VAULT_KEY_MISSING"
    assert "cmohub vault init" in caught.value.message
    assert caught.value.where is not None and "audit.v3.key" in caught.value.where


def test_symlinked_or_mislabelled_key_files_are_refused(tmp_path: Path) -> None:
    provider = FileKeyProvider(tmp_path)
    provider.create(KeyPurpose.INDEX)
    provider.create(KeyPurpose.KEK)
    # A KEK copied over the index key's name: the header gives it away.
    kek = provider.path(KeyPurpose.KEK, 1).read_bytes()
    target = provider.path(KeyPurpose.INDEX, 2)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, kek)
    os.close(fd)
    with pytest.raises(ConfigError, match="VAULT_KEY_INVALID"):
        provider.load(KeyPurpose.INDEX, 2)
    link = provider.path(KeyPurpose.INDEX, 3)
    link.symlink_to(provider.path(KeyPurpose.INDEX, 1))
    with pytest.raises(ConfigError, match="VAULT_KEY_PERMISSIONS"):
        provider.load(KeyPurpose.INDEX, 3)


def test_env_keys_are_read_but_never_created() -> None:
    key = os.urandom(32)
    provider = EnvKeyProvider(
        {
            "CMOHUB_VAULT_KEY_INDEX_V1": base64.b64encode(key).decode(),
            "CMOHUB_VAULT_KEY_INDEX_V3": base64.b64encode(os.urandom(32)).decode(),
            "CMOHUB_VAULT_KEY_KEK_V1": "not base64!",
            "CMOHUB_VAULT_KEY_AUDIT_V1": base64.b64encode(b"short").decode(),
            "UNRELATED": "x",
        }
    )
    assert provider.versions(KeyPurpose.INDEX) == [1, 3]
    assert provider.load(KeyPurpose.INDEX, 1) == key
    for purpose in (KeyPurpose.KEK, KeyPurpose.AUDIT):
        with pytest.raises(ConfigError) as caught:
            provider.load(purpose, 1)
        assert caught.value.code == "VAULT_KEY_INVALID"
    with pytest.raises(ConfigError) as caught:
        provider.create(KeyPurpose.INDEX)
    assert caught.value.code == "VAULT_KEY_READONLY"
    assert "CMOHUB_VAULT_KEY_INDEX_V4" in caught.value.message
    with pytest.raises(ConfigError, match="VAULT_KEY_MISSING"):
        provider.load(KeyPurpose.INDEX, 2)


def test_memory_keys_are_separate_per_purpose() -> None:
    provider = MemoryKeyProvider.generated()
    keys = {provider.load(p, 1) for p in KeyPurpose}
    assert len(keys) == 3


def test_the_roles_template_grants_nothing_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "roles.yaml"
    path.write_text(roles_template(), encoding="utf-8")
    path.chmod(0o600)
    roles = load_roles(path)
    assert not roles.grants("root", "privacy_officer")
    path.write_text(roles_template(["alice", "o'neil: x"]), encoding="utf-8")
    roles = load_roles(path)
    assert roles.grants("alice", "privacy_officer") and roles.grants("o'neil: x", "privacy_officer")
    assert roles.session_role("alice") == "privacy_officer"
    assert roles.session_role("mallory") == "none"
    assert not load_roles(tmp_path / "absent.yaml").grants("alice", "privacy_officer")


def test_a_roles_file_others_can_edit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "roles.yaml"
    path.write_text("actors: {mallory: [privacy_officer]}\n", encoding="utf-8")
    path.chmod(0o666)
    with pytest.raises(ConfigError) as caught:
        load_roles(path)
    assert caught.value.code == "VAULT_ROLES_PERMISSIONS"


@pytest.mark.parametrize(
    "data",
    [["alice"], {"actors": ["alice"]}, {"actors": {"alice": ["wizard"]}}, {"people": {}}],
)
def test_malformed_roles_are_a_config_error(data: object) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_roles(data)
    assert caught.value.code == "VAULT_ROLES_INVALID"
