"""Tokens, roles and the token file: loraplane.auth without a server."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from loraplane import auth
from loraplane.auth import ANONYMOUS, Authenticator, Role, TokenRegistry, add_token, create_authenticator, revoke_token
from loraplane.errors import PermissionDenied, StartupError, Unauthenticated
from loraplane.proto import serving_pb2, trainer_pb2
from serving_svc.server import RPC_ROLES as SERVING_ROLES
from trainer_svc.server import RPC_ROLES as TRAINER_ROLES


@pytest.fixture(autouse=True)
def _reread_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "RELOAD_CHECK_SECONDS", 0.0)


def test_the_file_keeps_a_hash_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    token = add_token(path, "ci-bot", [Role.TRAIN])
    text = path.read_text()
    assert token not in text and auth.hash_token(token) in text
    assert path.stat().st_mode & 0o777 == 0o600
    assert json.loads(text)["tokens"][0] == {"name": "ci-bot", "sha256": auth.hash_token(token), "roles": ["train"]}


def test_the_authorization_header_is_checked_for_token_and_role(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    token = add_token(path, "ci-bot", [Role.TRAIN])
    authenticator = Authenticator(TokenRegistry(path))
    caller = authenticator.caller(f"Bearer {token}", {Role.TRAIN})
    assert (caller.name, caller.roles, caller.sees_every_job) == ("ci-bot", {Role.TRAIN}, False)
    assert authenticator.caller(f"bearer  {token} ", {Role.TRAIN}).name == "ci-bot"  # scheme case, spaces
    with pytest.raises(Unauthenticated, match="needs a token"):
        authenticator.caller(None, {Role.TRAIN})
    with pytest.raises(Unauthenticated, match="must read `Bearer <token>`"):
        authenticator.caller(f"Basic {token}", {Role.TRAIN})
    with pytest.raises(Unauthenticated, match="not valid"):
        authenticator.caller(f"Bearer {token}x", {Role.TRAIN})
    with pytest.raises(PermissionDenied, match="needs the admin or generate role; the token of 'ci-bot' has train"):
        authenticator.caller(f"Bearer {token}", {Role.GENERATE, Role.ADMIN})


def test_tokens_added_and_revoked_take_effect_without_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    first = add_token(path, "first", [Role.GENERATE])
    authenticator = Authenticator(TokenRegistry(path))
    second = add_token(path, "second", [Role.ADMIN])
    assert authenticator.caller(f"Bearer {second}", {Role.ADMIN}).sees_every_job
    rotated = add_token(path, "first", [Role.GENERATE], replace=True)
    with pytest.raises(Unauthenticated):
        authenticator.caller(f"Bearer {first}", {Role.GENERATE})
    assert authenticator.caller(f"Bearer {rotated}", {Role.GENERATE}).name == "first"
    revoke_token(path, "second")
    with pytest.raises(Unauthenticated):
        authenticator.caller(f"Bearer {second}", {Role.ADMIN})


def test_a_broken_edit_keeps_the_tokens_read_before(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "tokens.json"
    token = add_token(path, "kept", [Role.TRAIN])
    authenticator = Authenticator(TokenRegistry(path))
    path.write_text('{"tokens": [{"name": "x"')  # an editor saving half a file
    assert authenticator.caller(f"Bearer {token}", {Role.TRAIN}).name == "kept"
    assert "cannot be used, keeping the tokens read before" in caplog.text


def test_a_kubernetes_secret_update_is_picked_up(tmp_path: Path) -> None:
    """A mounted Secret is tokens.json -> ..data/tokens.json, ..data -> a timestamped folder that the kubelet
    replaces by swapping the ..data link."""
    mount = tmp_path / "secret"
    old, new = mount / "..2026_11_24_old", mount / "..2026_11_24_new"
    old.mkdir(parents=True)
    new.mkdir()
    before = add_token(old / "tokens.json", "before", [Role.TRAIN])
    (mount / "..data").symlink_to(old.name)
    (mount / "tokens.json").symlink_to("..data/tokens.json")
    authenticator = Authenticator(TokenRegistry(mount / "tokens.json"))
    assert authenticator.caller(f"Bearer {before}", {Role.TRAIN}).name == "before"

    after = add_token(new / "tokens.json", "after", [Role.TRAIN])
    (mount / "..data_tmp").symlink_to(new.name)
    os.replace(mount / "..data_tmp", mount / "..data")
    assert authenticator.caller(f"Bearer {after}", {Role.TRAIN}).name == "after"
    with pytest.raises(Unauthenticated):
        authenticator.caller(f"Bearer {before}", {Role.TRAIN})


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no token file at"),
        ('{"tokens": [{"name": "a", "sha256": "short", "roles": ["train"]}]}', "tokens.0.sha256"),
        ('{"tokens": [{"name": "a", "sha256": "' + "0" * 64 + '", "roles": ["root"]}]}', "tokens.0.roles"),
        ('{"tokens": [], "extra": 1}', "extra: Extra inputs are not permitted"),
        (
            json.dumps({"tokens": [{"name": "a", "sha256": "0" * 64, "roles": ["train"]}] * 2}),
            "token names must be unique; repeated: a",
        ),
    ],
)
def test_a_missing_or_bad_token_file_stops_start_up(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "tokens.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(StartupError, match=message):
        create_authenticator("tokens", path)


def test_auth_off_makes_everyone_the_anonymous_caller_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    authenticator = create_authenticator("off", tmp_path / "absent.json")
    assert authenticator.caller(None, {Role.ADMIN}) is ANONYMOUS
    assert "authentication is OFF" in caplog.text


@pytest.mark.parametrize(
    ("descriptor", "roles"),
    [
        (serving_pb2.DESCRIPTOR.services_by_name["Inference"], SERVING_ROLES),
        (trainer_pb2.DESCRIPTOR.services_by_name["Trainer"], TRAINER_ROLES),
    ],
    ids=["serving", "trainer"],
)
def test_every_rpc_has_a_role(descriptor: object, roles: dict[str, Role]) -> None:
    assert set(roles) == {method.name for method in descriptor.methods}  # type: ignore[attr-defined]
