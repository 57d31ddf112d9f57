"""Who may do what in the vault: the roles file ``CMOHUB_HOME/roles.yaml``.

The file maps actor names to roles::

    actors:
      alice: [privacy_officer]
      bob: [data_engineer]

=================== ========================================================================
role                may
=================== ========================================================================
``privacy_officer`` re-identify (``reveal``), withdraw consent (``withdraw``)
``data_engineer``   tokenize, look up, verify, enroll, merge, rotate, checkpoint, report
``service``         the same as a data engineer; pipelines act as ``pipeline:<dag>`` with
                    this role and never appear in the file
=================== ========================================================================

Only ``reveal`` and ``withdraw`` consult the file: the actor must claim the privacy-officer
role *and* be listed with it. ``cmohub vault init`` writes a template that grants nothing
(``--privacy-officer NAME`` adds names explicitly). A roles file that its group or others can
write is refused (``VAULT_ROLES_PERMISSIONS``), since whoever can edit it can grant
re-identification; a malformed one is ``VAULT_ROLES_INVALID``.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from cmohub.errors import ConfigError

PRIVACY_OFFICER = "privacy_officer"
DATA_ENGINEER = "data_engineer"
SERVICE = "service"
KNOWN_ROLES = frozenset({PRIVACY_OFFICER, DATA_ENGINEER, SERVICE})


class Roles:
    """Actor name -> granted roles."""

    def __init__(self, grants: Mapping[str, Iterable[str]] | None = None) -> None:
        self._grants = {name: frozenset(roles) for name, roles in (grants or {}).items()}

    def __repr__(self) -> str:
        return f"Roles({len(self._grants)} actors)"

    def grants(self, actor: str, role: str) -> bool:
        return role in self._grants.get(actor, frozenset())

    def roles_of(self, actor: str) -> frozenset[str]:
        return self._grants.get(actor, frozenset())

    def session_role(self, actor: str) -> str:
        """The role a person acts in from the CLI: privacy officer if granted, else any."""
        roles = self.roles_of(actor)
        if PRIVACY_OFFICER in roles:
            return PRIVACY_OFFICER
        return min(roles) if roles else "none"


def parse_roles(data: Any, where: str = "roles.yaml") -> Roles:
    if data is None:
        return Roles()
    if not isinstance(data, Mapping) or set(data) - {"actors"}:
        raise ConfigError(
            "expected a mapping with one key, 'actors'", code="VAULT_ROLES_INVALID", where=where
        )
    actors = data.get("actors") or {}
    if not isinstance(actors, Mapping):
        raise ConfigError("'actors' must be a mapping", code="VAULT_ROLES_INVALID", where=where)
    grants: dict[str, list[str]] = {}
    for name, listed in actors.items():
        if not isinstance(name, str) or not name.strip():
            raise ConfigError("actor names must be text", code="VAULT_ROLES_INVALID", where=where)
        roles = [listed] if isinstance(listed, str) else listed
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise ConfigError(
                f"roles of {name!r} must be a list of role names",
                code="VAULT_ROLES_INVALID",
                where=where,
            )
        unknown = set(roles) - KNOWN_ROLES
        if unknown:
            raise ConfigError(
                f"unknown roles {sorted(unknown)} for {name!r}; known: {sorted(KNOWN_ROLES)}",
                code="VAULT_ROLES_INVALID",
                where=where,
            )
        grants[name] = roles
    return Roles(grants)


def load_roles(path: Path) -> Roles:
    """The roles in ``path``; no file grants nothing."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return Roles()
    if info.st_mode & 0o022:
        raise ConfigError(
            f"roles file is writable by group or others (mode {stat.S_IMODE(info.st_mode):04o}); "
            f"run: chmod 600 {path}",
            code="VAULT_ROLES_PERMISSIONS",
            where=str(path),
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ConfigError(
            f"cannot read the roles file ({type(error).__name__})",
            code="VAULT_ROLES_INVALID",
            where=str(path),
        ) from None
    return parse_roles(data, str(path))


def roles_template(privacy_officers: Iterable[str] = ()) -> str:
    """The text ``cmohub vault init`` writes: grants nothing unless names are given."""
    names = sorted(set(privacy_officers))
    lines = [
        "# Vault roles (cmohub vault init wrote this file). Actor name -> list of roles.",
        "#   privacy_officer  may reveal (re-identify) COIs and withdraw consent",
        "#   data_engineer    may tokenize, verify, enroll, merge, rotate keys, report",
        "#   service          pipelines (pipeline:<dag>); they need no entry here",
        "# Nobody may reveal unless listed below with privacy_officer. Every reveal attempt,",
        "# granted or refused, is recorded in the vault's audit log.",
    ]
    if names:
        lines.append("actors:")
        # JSON strings are YAML scalars: any actor name is written safely quoted.
        lines.extend(f"  {json.dumps(name)}: [{PRIVACY_OFFICER}]" for name in names)
    else:
        lines.append("actors: {}")
    return "\n".join(lines) + "\n"
