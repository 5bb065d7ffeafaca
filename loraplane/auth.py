"""Who is calling, and may they: bearer tokens with roles, one check for gRPC and HTTP alike.

Tokens live in a JSON file (mounted from a Kubernetes Secret in a cluster) as SHA-256 hashes,
never in the clear: a leaked file grants nothing. A plain hash suffices because tokens are 256
random bits, not passwords; a slow hash would only slow every request. The presented token's
hash is compared with every stored hash in constant time, and the file is read again when it
changes, so tokens are added and revoked without a restart.
"""

from __future__ import annotations

import contextvars
import enum
import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from loraplane.errors import PermissionDenied, StartupError, Unauthenticated

log = logging.getLogger(__name__)

TOKEN_PREFIX = "lp_"
RELOAD_CHECK_SECONDS = 1.0
"""How often, at most, a request looks whether the token file changed: a stat, not a read."""


class Role(enum.StrEnum):
    TRAIN = "train"
    """Create, cancel and read one's own training jobs."""
    GENERATE = "generate"
    """Generate with the base model or any adapter, list adapters, record feedback, read drift."""
    ADMIN = "admin"
    """Load, unload and pin adapters; read and cancel every caller's jobs."""


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: the token's name (which owns the jobs it creates) and its roles."""

    name: str
    roles: frozenset[Role]

    @property
    def sees_every_job(self) -> bool:
        return Role.ADMIN in self.roles


ANONYMOUS = Caller(name="", roles=frozenset(Role))
"""Every caller when authentication is off: all roles, and every job is everyone's."""

_current_caller: contextvars.ContextVar[Caller] = contextvars.ContextVar("loraplane_caller", default=ANONYMOUS)


def current_caller() -> Caller:
    """The caller of the request being handled, set by the gRPC auth interceptor."""
    return _current_caller.get()


def set_current_caller(caller: Caller) -> contextvars.Token[Caller]:
    return _current_caller.set(caller)


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$", description="Who holds it; owns its jobs.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="hash_token(token): the token is never stored.")
    roles: frozenset[Role] = Field(min_length=1)


class TokenFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tokens: list[TokenEntry] = Field(default_factory=list)

    def validated(self) -> TokenFile:
        names = [entry.name for entry in self.tokens]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"token names must be unique; repeated: {', '.join(repeated)}")
        return self

    @classmethod
    def read(cls, path: Path) -> TokenFile:
        """The file's tokens; ValueError saying what is wrong with it (OSError if unreadable)."""
        try:
            return cls.model_validate_json(path.read_bytes()).validated()
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise ValueError(f"{path}: {where}: {first['msg']}") from None

    def write(self, path: Path) -> None:
        """Replace the file in one rename, readable by its owner only: a reader never sees half of it."""
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write(self.model_dump_json(indent=2) + "\n")
        partial.replace(path)


class TokenRegistry:
    """The tokens of one file, reread when its identity (inode, size, mtime) changes.

    A file that turns bad while running keeps the tokens last read, with an error in the log:
    a typo in an edit must not lock every caller out. At start a bad or missing file is a
    StartupError.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._checked_at = 0.0
        self._identity: tuple[int, int, int] | None = None
        try:
            self._entries = self._load()
        except FileNotFoundError:
            raise StartupError(
                f"authentication is on and there is no token file at {path}: create a token with "
                "`loraplane token add NAME --role ROLE`, point LORAPLANE_AUTH_TOKENS_FILE at a file, or set "
                "LORAPLANE_AUTH=off to serve every caller without one"
            ) from None
        except (OSError, ValueError) as exc:
            raise StartupError(f"cannot use the token file (LORAPLANE_AUTH_TOKENS_FILE): {exc}") from None

    def _stat_identity(self) -> tuple[int, int, int] | None:
        try:
            stat = self._path.stat()
        except OSError:
            return None
        return stat.st_ino, stat.st_size, stat.st_mtime_ns

    def _load(self) -> tuple[TokenEntry, ...]:
        self._identity = self._stat_identity()
        return tuple(TokenFile.read(self._path).tokens)

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked_at < RELOAD_CHECK_SECONDS:
            return
        self._checked_at = now
        if self._stat_identity() == self._identity:
            return
        try:
            self._entries = self._load()
            log.info("token file %s changed: %d tokens now", self._path, len(self._entries))
        except (OSError, ValueError) as exc:  # logged once per version of the file: _load noted its identity
            log.error("token file %s changed but cannot be used, keeping the tokens read before: %s", self._path, exc)

    def caller(self, token: str) -> Caller | None:
        """The caller the token belongs to, or None. Every stored hash is compared, whichever matches."""
        with self._lock:
            self._refresh()
            entries = self._entries
        presented = hash_token(token).encode()
        found: TokenEntry | None = None
        for entry in entries:
            if hmac.compare_digest(presented, entry.sha256.encode()):
                found = entry
        return None if found is None else Caller(name=found.name, roles=found.roles)


class Authenticator:
    """Turns a request's `authorization` value into a Caller allowed `role`, or the error to answer with.

    `registry` None means authentication is off: every request is ANONYMOUS.
    """

    def __init__(self, registry: TokenRegistry | None) -> None:
        self._registry = registry

    def caller(self, authorization: str | None, required: Iterable[Role]) -> Caller:
        """The caller, if it holds one of `required` (none = any valid token will do)."""
        if self._registry is None:
            return ANONYMOUS
        scheme, _, token = (authorization or "").strip().partition(" ")
        if not authorization:
            raise Unauthenticated("this call needs a token: send the header `authorization: Bearer <token>`")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("the authorization header must read `Bearer <token>`")
        caller = self._registry.caller(token.strip())
        if caller is None:
            raise Unauthenticated("the token is not valid (unknown or revoked)")
        required = frozenset(required)
        if required and not (required & caller.roles):
            needed = " or ".join(sorted(required))
            raise PermissionDenied(
                f"this call needs the {needed} role; the token of {caller.name!r} has {', '.join(sorted(caller.roles))}"
            )
        return caller


def create_authenticator(mode: str, tokens_file: Path) -> Authenticator:
    """From the settings: tokens read from `tokens_file`, or none at all (with a warning) when `mode` is off."""
    if mode == "off":
        log.warning(
            "authentication is OFF (LORAPLANE_AUTH=off): anyone who can reach this service's ports may use every "
            "call, including training, loading and unloading adapters and reading every job"
        )
        return Authenticator(None)
    return Authenticator(TokenRegistry(tokens_file))


def add_token(path: Path, name: str, roles: Iterable[Role], *, replace: bool = False) -> str:
    """Create a token for `name` with `roles` in the file at `path` (created if missing); return the token,
    which is shown only now. `replace` rotates an existing name's token; without it a taken name is refused."""
    tokens = TokenFile.read(path) if path.exists() else TokenFile()
    if any(entry.name == name for entry in tokens.tokens) and not replace:
        raise ValueError(f"a token named {name!r} exists; revoke it first, or replace it")
    token = new_token()
    entry = TokenEntry(name=name, sha256=hash_token(token), roles=frozenset(roles))
    TokenFile(tokens=[*(e for e in tokens.tokens if e.name != name), entry]).write(path)
    return token


def revoke_token(path: Path, name: str) -> None:
    """Remove `name`'s token: services stop accepting it within RELOAD_CHECK_SECONDS."""
    tokens = TokenFile.read(path)
    kept = [entry for entry in tokens.tokens if entry.name != name]
    if len(kept) == len(tokens.tokens):
        raise ValueError(f"no token named {name!r} in {path}")
    TokenFile(tokens=kept).write(path)
