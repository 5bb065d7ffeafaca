"""Per-adapter policies an admin sets (capture, retraining): a change names what it alters and keeps the rest."""

from __future__ import annotations

from datetime import datetime
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from loraplane.errors import InternalError, InvalidArgument, NotFound
from loraplane.storage import ObjectStore

P = TypeVar("P", bound=BaseModel)


def changed_policy(current: P, change: BaseModel, *, actor: str, at: datetime) -> P:
    """`current` with the fields `change` sets (None leaves a field as it is), and who changed it when;
    InvalidArgument naming the field whose new value is out of range."""
    figures = change.model_dump(exclude_none=True)
    try:
        return type(current).model_validate({**current.model_dump(), **figures, "actor": actor, "at": at})
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else "policy"
        raise InvalidArgument(f"{field}: {error['msg']}", field=field) from None


def read_policy(store: ObjectStore, key: str, policy_type: type[P]) -> P:
    """The policy kept at `key`; `policy_type`'s defaults (off) where nobody has set one."""
    try:
        raw = store.get_bytes(key)
    except NotFound:
        return policy_type()
    try:
        return policy_type.model_validate_json(raw)
    except ValidationError as exc:
        raise InternalError(f"policy {key} is unreadable: {exc}") from None


def write_policy(store: ObjectStore, key: str, policy: BaseModel) -> None:
    store.put_bytes(key, policy.model_dump_json().encode())
