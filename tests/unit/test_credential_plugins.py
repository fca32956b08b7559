"""Credential provider plugins: the kubelet's config file and exec protocol, its cache rules.

The plugin is a real executable (tests/support/credential_plugin.py) run as a subprocess;
the clock is ours, so cache expiry is proven without waiting.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from image_cloner.credential_plugins import (
    RENEW_FLOOR,
    CredentialPluginError,
    PluginLogin,
    PluginProvider,
    load_provider_config,
    parse_duration,
)
from image_cloner.credentials import BackupCredentials
from image_cloner.oci.options import Credentials
from image_cloner.oci.references import parse_reference
from tests.support.clock import Clock
from tests.support.credential_plugin import calls, write_config, write_plugin


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("10s", 10.0),
        ("5m0s", 300.0),
        ("1h30m", 5400.0),
        ("12h", 43200.0),
        ("1.5h", 5400.0),
        ("300ms", 0.3),
    ],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "m", "1d", "-"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(CredentialPluginError):
        parse_duration(text)


def provider(
    tmp_path: Path,
    clock: Callable[[], float],
    *,
    match: list[str] | None = None,
    **env: str,
) -> tuple[PluginProvider, Path]:
    counter = tmp_path / "calls"
    write_plugin(tmp_path / "bin")
    config = write_config(
        tmp_path / "config.yaml",
        match_images=match or ["*.example.com", "localhost:*"],
        env={
            "PLUGIN_CALLS": str(counter),
            "PLUGIN_USER": "robot",
            "PLUGIN_PASSWORD": "s3cret",
            **env,
        },
    )
    specs = load_provider_config(config, bin_dir=tmp_path / "bin")
    return PluginProvider(specs, clock=clock), counter


async def test_the_plugin_answers_and_its_cache_duration_is_honoured(tmp_path: Path) -> None:
    clock = Clock()
    plugins, counter = provider(tmp_path, clock, PLUGIN_CACHE_DURATION="1m")
    ref = parse_reference("registry.example.com/team/app:1")
    found = await plugins.for_image(ref, "team-a")
    assert [f.credentials for f in found] == [Credentials("robot", "s3cret")]
    assert found[0].namespace is None  # controller-wide: serves every namespace
    assert found[0].origin == "credential provider test-credential-provider"
    # cacheKeyType Registry: another image of the same registry is served from the cache.
    await plugins.for_image(parse_reference("registry.example.com/team/other:2"), "team-b")
    assert calls(counter) == ["registry.example.com/team/app"]
    clock.now += 61
    await plugins.for_image(ref, "team-a")
    assert len(calls(counter)) == 2


async def test_image_cache_key_and_zero_duration(tmp_path: Path) -> None:
    clock = Clock()
    plugins, counter = provider(tmp_path, clock, PLUGIN_CACHE_KEY_TYPE="Image")
    await plugins.for_image(parse_reference("a.example.com/x:1"), "ns")
    await plugins.for_image(parse_reference("a.example.com/x:2"), "ns")  # same image, other tag
    await plugins.for_image(parse_reference("a.example.com/y:1"), "ns")
    assert calls(counter) == ["a.example.com/x", "a.example.com/y"]
    clock.now += 601  # defaultCacheDuration 10m applies when the answer names none
    await plugins.for_image(parse_reference("a.example.com/x:1"), "ns")
    assert len(calls(counter)) == 3

    zero, zero_counter = provider(tmp_path / "zero", clock, PLUGIN_CACHE_DURATION="0")
    for _ in range(2):
        await zero.for_image(parse_reference("a.example.com/x:1"), "ns")
    assert len(calls(zero_counter)) == 2


async def test_unmatched_images_do_not_run_the_plugin(tmp_path: Path) -> None:
    plugins, counter = provider(tmp_path, Clock(), match=["*.example.com"])
    assert await plugins.for_image(parse_reference("quay.io/team/app:1"), "ns") == []
    assert await plugins.for_image(parse_reference("example.com/app:1"), "ns") == []
    assert calls(counter) == []


async def test_auth_keys_are_matched_against_the_image(tmp_path: Path) -> None:
    plugins, _ = provider(tmp_path, Clock(), PLUGIN_KEY="a.example.com/team-a")
    assert await plugins.for_image(parse_reference("a.example.com/team-b/app:1"), "ns") == []
    found = await plugins.for_image(parse_reference("a.example.com/team-a/app:1"), "ns")
    assert len(found) == 1


async def test_a_failing_plugin_gives_nothing_and_is_not_cached(tmp_path: Path) -> None:
    clock = Clock()
    plugins, counter = provider(tmp_path, clock, PLUGIN_CACHE_KEY_TYPE="Bogus")
    ref = parse_reference("a.example.com/x:1")
    assert await plugins.for_image(ref, "ns") == []
    assert await plugins.for_image(ref, "ns") == []
    assert len(calls(counter)) == 2


def test_config_errors_are_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", match_images=["*.example.com"], env={})
    with pytest.raises(CredentialPluginError, match="is not an executable file"):
        load_provider_config(config, bin_dir=tmp_path / "nowhere")
    (tmp_path / "bad.yaml").write_text("kind: Something\n")
    with pytest.raises(CredentialPluginError, match="not a CredentialProviderConfig"):
        load_provider_config(tmp_path / "bad.yaml", bin_dir=tmp_path)


# --- the backup registry's push login from a plugin (PluginLogin) ----------------------


def backup_login(
    tmp_path: Path, clock: Clock, login_file: Path, **env: str
) -> tuple[PluginLogin, Path]:
    login_file.write_text("robot\ns3cret-1\n")
    plugins, counter = provider(
        tmp_path, clock, match=["backup.example.com"], PLUGIN_LOGIN_FILE=str(login_file), **env
    )
    spec = load_provider_config(tmp_path / "config.yaml", bin_dir=tmp_path / "bin")[0]
    return PluginLogin(plugins, spec, "backup.example.com/mirror", clock=clock), counter


async def test_the_backup_login_is_renewed_when_its_answer_runs_out(tmp_path: Path) -> None:
    clock = Clock()
    login_file = tmp_path / "login"
    login, counter = backup_login(tmp_path, clock, login_file, PLUGIN_CACHE_DURATION="6h")
    credentials = BackupCredentials({}, host="backup.example.com", login=login)
    assert "backup.example.com" not in credentials  # no login before the first run: anonymous
    assert await login.renew()
    assert credentials["backup.example.com"] == Credentials("robot", "s3cret-1")
    assert login.version == 1
    # The token is rotated by the cloud; the cached answer is used until cacheDuration ends.
    login_file.write_text("robot\ns3cret-2\n")
    assert not await login.renew()
    assert len(calls(counter)) == 1
    clock.now += 6 * 3600 + 1
    assert await login.renew()
    assert credentials["backup.example.com"] == Credentials("robot", "s3cret-2")
    assert (login.version, len(calls(counter))) == (2, 2)
    # The same login again is no change (no needless rotation downstream).
    clock.now += 6 * 3600 + 1
    assert not await login.renew()
    assert login.version == 2


async def test_keep_renewed_runs_at_expiry_and_reports_each_change(tmp_path: Path) -> None:
    login_file = tmp_path / "login"
    # The real clock, for the provider's cache as for the login: cacheDuration 0 would run
    # at every request; the floor spaces runs out. (A hand clock at 1000 here once made the
    # first expiry lie in the future on a machine up for less than 1000 s: a 400 s sleep.)
    plugins, counter = provider(
        tmp_path,
        time.monotonic,
        match=["backup.example.com"],
        PLUGIN_LOGIN_FILE=str(login_file),
        PLUGIN_CACHE_DURATION="0",
    )
    login_file.write_text("robot\none\n")
    spec = load_provider_config(tmp_path / "config.yaml", bin_dir=tmp_path / "bin")[0]
    login = PluginLogin(plugins, spec, "backup.example.com")
    seen: list[str] = []
    changed = asyncio.Event()

    async def on_change(which: PluginLogin) -> None:
        assert which.current is not None
        seen.append(which.current.password)
        changed.set()

    task = asyncio.create_task(login.keep_renewed(on_change))
    try:
        await asyncio.wait_for(changed.wait(), 5)  # the first run: at once
        assert seen == ["one"]
        assert len(calls(counter)) == 1
        login_file.write_text("robot\ntwo\n")
        changed.clear()
        await asyncio.wait_for(changed.wait(), RENEW_FLOOR + 5)
        assert seen == ["one", "two"]
        assert len(calls(counter)) == 2  # not one run per loop turn: the floor held
    finally:
        task.cancel()


async def test_a_failing_backup_plugin_keeps_the_last_login(tmp_path: Path) -> None:
    clock = Clock()
    login_file = tmp_path / "login"
    login, counter = backup_login(tmp_path, clock, login_file, PLUGIN_CACHE_DURATION="1m")
    assert await login.renew()
    login_file.write_text("no second line")  # the plugin now crashes (ValueError)
    clock.now += 61
    assert not await login.renew()
    assert login.current == Credentials("robot", "s3cret-1")
    assert len(calls(counter)) == 2


async def test_a_plugin_that_never_answers_leaves_no_login(tmp_path: Path) -> None:
    clock = Clock()
    login, _ = backup_login(tmp_path, clock, tmp_path / "login", PLUGIN_FAIL="1")
    assert not await login.renew()
    assert login.current is None
    assert len(BackupCredentials({}, host="backup.example.com", login=login)) == 0
