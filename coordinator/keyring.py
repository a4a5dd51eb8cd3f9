"""Credentials: client API keys (one tenant each), admin keys, and agent tokens.

A credential reads `cf<k>_<id>_<secret>`: `k` is `c` (client), `a` (admin) or `g` (agent),
`id` is public (it names the key in the keys file and in logs), `secret` is 256 random bits.
Only the sha256 of the whole credential is stored: the secret is random, so a slow hash adds
nothing. Verification looks the entry up by its public id, then compares digests with
`hmac.compare_digest`; an unknown id is compared against a dummy digest so both paths cost the
same.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from comfyfleet.coordinator.errors import CoordinatorError

Kind = Literal["client", "admin", "agent"]
PREFIX: dict[str, Kind] = {"cfc": "client", "cfa": "admin", "cfg": "agent"}
LETTER = {kind: prefix for prefix, kind in PREFIX.items()}
_CREDENTIAL = re.compile(r"^(cf[cag])_([0-9a-f]{12})_([A-Za-z0-9_-]{20,128})$")
_NAME = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")
_DUMMY = hashlib.sha256(b"comfyfleet-no-such-key").hexdigest()


class KeysFileError(CoordinatorError):
    """The keys file cannot be read or is malformed."""


@dataclass(frozen=True, slots=True)
class KeyEntry:
    id: str
    kind: Kind
    sha256: str
    tenant: str | None = None  # client and admin keys
    agent_id: str | None = None  # agent token bound to one agent; None: a fleet token
    created_at: float = 0.0
    note: str = ""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request is from."""

    kind: Kind
    key_id: str
    tenant: str | None = None
    agent_id: str | None = None

    @property
    def admin(self) -> bool:
        return self.kind == "admin"

    def sees(self, tenant: str) -> bool:
        return self.admin or self.tenant == tenant


# With no keys configured (loopback only), every request acts as this.
OPEN = Principal(kind="admin", key_id="-", tenant="default")


def digest(credential: str) -> str:
    return hashlib.sha256(credential.encode()).hexdigest()


def new_credential(
    kind: Kind,
    *,
    tenant: str | None = None,
    agent_id: str | None = None,
    any_agent: bool = False,
    note: str = "",
    now: float | None = None,
) -> tuple[str, KeyEntry]:
    """A fresh credential (shown once) and the entry that stores only its hash.

    An agent token speaks for the one agent `agent_id` names; a fleet token, which any host
    may use to register as any agent, must be asked for explicitly with `any_agent=True`."""
    if kind in ("client", "admin"):
        if not tenant or not _NAME.match(tenant):
            raise KeysFileError("tenant must be 1-128 of A-Z a-z 0-9 . _ : @ -", "tenant")
    if kind == "agent" and (agent_id is None) != any_agent:
        raise KeysFileError(
            "an agent token is bound to one agent id, or explicitly to any agent (not both)",
            "agent_id",
        )
    if agent_id is not None and not _NAME.match(agent_id):
        raise KeysFileError("agent id must be 1-128 of A-Z a-z 0-9 . _ : @ -", "agent_id")
    key_id = secrets.token_hex(6)
    credential = f"{LETTER[kind]}_{key_id}_{secrets.token_urlsafe(32)}"
    entry = KeyEntry(
        id=key_id,
        kind=kind,
        sha256=digest(credential),
        tenant=tenant if kind != "agent" else None,
        agent_id=agent_id if kind == "agent" else None,
        created_at=time.time() if now is None else now,
        note=note,
    )
    return credential, entry


class KeyRing:
    """The entries of one keys file, by id. `reload()` swaps them (SIGHUP)."""

    def __init__(self, path: Path | None, entries: dict[str, KeyEntry] | None = None) -> None:
        self.path = path
        self.entries = entries or {}

    @classmethod
    def load(cls, path: Path) -> KeyRing:
        ring = cls(path)
        ring.reload()
        return ring

    @property
    def enabled(self) -> bool:
        return bool(self.entries)

    def reload(self) -> None:
        """Swap in the keys file's entries (SIGHUP). On a ring that has keys, a file that is
        missing, unreadable, malformed or empty raises `KeysFileError` and the current entries
        stay: a coordinator that once had keys never serves without them (that would switch
        authentication off, on whatever address it listens). Only a ring that started with no
        keys, which `exposure_problem` keeps on loopback, may stay empty."""
        if self.path is None:
            return
        entries = read_keys(self.path, missing_ok=not self.entries)
        if self.entries and not entries:
            raise KeysFileError(
                f"keys file {self.path} holds no keys; keeping the {len(self.entries)} loaded "
                "before, since dropping them would switch authentication off (create a new key "
                "before revoking the last one)",
                "keys_file",
            )
        self.entries = entries

    def verify(self, credential: str) -> Principal | None:
        """The principal for a presented credential, or None. Timing does not depend on
        how much of the secret matched."""
        match = _CREDENTIAL.match(credential)
        key_id = match.group(2) if match else ""
        entry = self.entries.get(key_id)
        expected = entry.sha256 if entry is not None else _DUMMY
        same = hmac.compare_digest(digest(credential).encode(), expected.encode())
        if entry is None or not same or match is None or PREFIX[match.group(1)] != entry.kind:
            return None
        return Principal(
            kind=entry.kind, key_id=entry.id, tenant=entry.tenant, agent_id=entry.agent_id
        )


def read_keys(path: Path, *, missing_ok: bool = True) -> dict[str, KeyEntry]:
    """The entries of a keys file; a missing file holds none (unless `missing_ok` is False)."""
    try:
        raw = path.read_text()
    except FileNotFoundError:
        if missing_ok:
            return {}
        raise KeysFileError(f"keys file {path} is missing", "keys_file") from None
    except OSError as exc:
        raise KeysFileError(f"cannot read keys file {path}: {exc.strerror}", "keys_file") from None
    try:
        data = json.loads(raw)
        entries = {}
        for item in data["keys"]:
            entry = KeyEntry(**item)
            if entry.kind not in LETTER or not re.fullmatch(r"[0-9a-f]{64}", entry.sha256):
                raise ValueError(f"bad entry {entry.id!r}")
            entries[entry.id] = entry
        return entries
    except (ValueError, KeyError, TypeError) as exc:
        raise KeysFileError(f"keys file {path} is malformed: {exc}", "keys_file") from None


def write_keys(path: Path, entries: dict[str, KeyEntry]) -> None:
    """Atomically, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    body = json.dumps({"keys": [asdict(e) for e in entries.values()]}, indent=2) + "\n"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(body)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
