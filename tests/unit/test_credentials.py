"""Logins from files: read once at start, followed when the files change, never leaked."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from image_cloner.credentials import (
    BackupCredentials,
    CredentialError,
    Login,
    Secret,
    WatchedLogin,
    watch_logins,
)
from image_cloner.oci.options import Credentials
from tests.support.mounted_secret import MountedSecret

PASSWORD = "s3cr3t-Pa55word"


def file_login(secret: MountedSecret) -> Login:
    return Login.load(
        username=Secret(variable="USER_FILE", path=secret.path("username")),
        password=Secret(variable="PASS_FILE", path=secret.path("password"), password=True),
    )


def test_a_mounted_secret_is_followed_through_the_kubelets_symlink_swap(tmp_path: Path) -> None:
    mounted = MountedSecret(tmp_path / "push")
    mounted.write(username="robot\n", password=f"{PASSWORD}\n")
    watched = WatchedLogin(file_login(mounted), what="push login")
    assert watched.current == Credentials("robot", PASSWORD)
    assert (watched.version, watched.refresh()) == (0, False)

    mounted.write(username="robot\n", password="n3w-Pa55word\n")
    assert watched.refresh() is True
    assert watched.current == Credentials("robot", "n3w-Pa55word")
    assert watched.version == 1
    assert watched.refresh() is False, "the same content is no change"

    mounted.write(username="robot-2", password="n3w-Pa55word")
    assert watched.refresh() is True
    assert watched.current == Credentials("robot-2", "n3w-Pa55word")
    assert watched.version == 2


def test_an_in_place_edit_is_seen_too(tmp_path: Path) -> None:
    user, password = tmp_path / "user", tmp_path / "pass"
    user.write_text("robot")
    password.write_text("one-pass")
    watched = WatchedLogin(
        Login.load(
            username=Secret(variable="U", path=user),
            password=Secret(variable="P", path=password, password=True),
        ),
        what="pull login",
    )
    password.write_text("two-pass")  # same inode, maybe the same mtime: content decides
    assert watched.refresh() is True
    assert watched.current.password == "two-pass"


@pytest.mark.parametrize(
    ("content", "password"),
    [
        (f"{PASSWORD}\n", PASSWORD),
        (f"{PASSWORD}\r\n", PASSWORD),
        (f" {PASSWORD} \n", f" {PASSWORD} "),  # blanks in a password may be meant
    ],
)
def test_a_trailing_newline_is_dropped_from_a_password(
    tmp_path: Path, content: str, password: str
) -> None:
    path = tmp_path / "password"
    path.write_text(content)
    assert Secret(variable="P", path=path, password=True).read() == password


def test_a_user_name_is_stripped(tmp_path: Path) -> None:
    path = tmp_path / "username"
    path.write_text("  robot \n")
    assert Secret(variable="U", path=path).read() == "robot"


@pytest.mark.parametrize("problem", ["missing", "empty", "newline only", "directory", "binary"])
def test_unreadable_files_name_the_variable_and_never_the_content(
    tmp_path: Path, problem: str
) -> None:
    path = tmp_path / "password"
    if problem == "empty":
        path.write_text("")
    elif problem == "newline only":
        path.write_text("\n")
    elif problem == "directory":
        path.mkdir()
    elif problem == "binary":
        path.write_bytes(b"\xff\xfe" + PASSWORD.encode())
    with pytest.raises(CredentialError) as caught:
        Secret(variable="IMAGE_CLONER_PASS_FILE", path=path, password=True).read()
    message = str(caught.value)
    assert message.startswith("IMAGE_CLONER_PASS_FILE: ")
    assert str(path) in message
    assert PASSWORD not in message
    assert "\n" not in message


def test_a_file_that_breaks_keeps_the_last_good_login(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mounted = MountedSecret(tmp_path / "pull")
    mounted.write(username="reader", password=PASSWORD)
    watched = WatchedLogin(file_login(mounted), what="pull login")
    mounted.write(username="reader", password="")
    for _ in range(3):
        assert watched.poll() is False
    assert watched.current == Credentials("reader", PASSWORD)
    warnings = [r for r in caplog.records if "cannot re-read credentials" in r.getMessage()]
    assert len(warnings) == 1, "a lasting problem is logged once, not at every poll"
    mounted.write(username="reader", password="fixed-pass")
    assert watched.poll() is True
    assert watched.current == Credentials("reader", "fixed-pass")
    assert PASSWORD not in caplog.text


def test_inline_logins_never_change() -> None:
    login = Login.load(
        username=Secret(variable="U", value="robot"),
        password=Secret(variable="P", value=PASSWORD, password=True),
    )
    watched = WatchedLogin(login, what="push login")
    assert login.from_files is False
    assert (watched.refresh(), watched.version) == (False, 0)
    assert PASSWORD not in repr(login)
    assert PASSWORD not in repr(watched)


async def test_watch_logins_reports_each_change(tmp_path: Path) -> None:
    mounted = MountedSecret(tmp_path / "push")
    mounted.write(username="robot", password="one-pass")
    watched = WatchedLogin(file_login(mounted), what="push login")
    seen: list[Credentials] = []
    changed = asyncio.Event()

    async def on_change(login: WatchedLogin) -> None:
        seen.append(login.current)
        changed.set()

    task = asyncio.create_task(watch_logins([watched], on_change=on_change, interval=0.01))
    try:
        await asyncio.sleep(0.05)
        assert seen == []
        mounted.write(username="robot", password="two-pass")
        await asyncio.wait_for(changed.wait(), timeout=5)
    finally:
        task.cancel()
    assert seen == [Credentials("robot", "two-pass")]


def test_backup_credentials_read_the_live_login(tmp_path: Path) -> None:
    mounted = MountedSecret(tmp_path / "push")
    mounted.write(username="robot", password="one-pass")
    watched = WatchedLogin(file_login(mounted), what="push login")
    others = {"docker.io": Credentials("hub", "hub-pass"), "backup:5000": Credentials("x", "y")}
    mapping = BackupCredentials(others, host="backup:5000", login=watched)
    assert mapping["backup:5000"] == Credentials("robot", "one-pass")
    assert sorted(mapping) == ["backup:5000", "docker.io"]
    assert len(mapping) == 2
    mounted.write(username="robot", password="two-pass")
    watched.refresh()
    assert mapping.get("backup:5000") == Credentials("robot", "two-pass")
    assert mapping["docker.io"] == Credentials("hub", "hub-pass")
    assert "pass" not in repr(mapping)
