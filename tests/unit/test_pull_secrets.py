"""Pull Secrets: the pull-only login goes in, and each namespace's copy follows a rotation.

On the fake Kubernetes API (which records every `ensure_pull_secret` call) and the real
reconciler; tests/e2e/test_pull_credentials.py proves the same on the test bed.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from image_cloner.controller.pull_secrets import (
    CONFIRMED_FOR,
    ENSURED_FOR,
    PullSecrets,
    watched_logins,
)
from image_cloner.controller.reconcile import Reconciler
from image_cloner.credentials import WatchedLogin
from image_cloner.health import Health
from image_cloner.metrics import Metrics
from image_cloner.oci.options import Credentials
from image_cloner.settings import Settings
from image_cloner.workloads import WorkloadKey
from tests.support.clock import Clock
from tests.support.fake_copier import FakeCopier
from tests.support.fake_kube import FakeKube, deployment

BACKUP = "backup.example:5000"
SECRET = "image-cloner-pull"
PUSH = {"IMAGE_CLONER_USER": "robot", "IMAGE_CLONER_PASS": "push-pass"}
WEB = WorkloadKey("Deployment", "demo", "web")


def pull_files(tmp_path: Path, password: str) -> dict[str, str]:
    (tmp_path / "pull-user").write_text("reader\n")
    (tmp_path / "pull-pass").write_text(password + "\n")
    return {
        "IMAGE_CLONER_PULL_USER_FILE": str(tmp_path / "pull-user"),
        "IMAGE_CLONER_PULL_PASS_FILE": str(tmp_path / "pull-pass"),
    }


def backed_up(name: str = "web") -> dict[str, object]:
    """A Deployment the controller rewrote earlier: backup image, our pull Secret."""
    obj = deployment(name, {"app": f"{BACKUP}/nginx:1"})
    obj["spec"]["template"]["spec"]["imagePullSecrets"] = [{"name": SECRET}]
    return obj


def reconciler_for(kube: FakeKube, settings: Settings, pull_secrets: PullSecrets) -> Reconciler:
    return Reconciler(
        kube=kube,
        copier=FakeCopier(),
        settings=settings,
        metrics=Metrics(health=Health()),
        pull_secrets=pull_secrets,
    )


def pull_secrets_for(
    kube: FakeKube, settings: Settings, clock: Clock | None = None
) -> tuple[PullSecrets, WatchedLogin | None]:
    push, pull = watched_logins(settings)
    secrets = PullSecrets(
        kube=kube,
        name=settings.pull_secret_name,
        registry_host=settings.backup.registry.host,
        login=pull or push,
        uses_push_login=settings.pull_secret_uses_push_login,
        clock=clock or Clock(),
    )
    return secrets, pull


async def test_a_rewrite_writes_the_pull_login_not_the_push_login(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {"IMAGE_CLONER_REGISTRY": BACKUP, **PUSH, **pull_files(tmp_path, "read-pass")}
    )
    kube = FakeKube()
    kube.add(deployment("web", {"app": "nginx:1"}))
    push, pull = watched_logins(settings)
    secrets = PullSecrets.for_settings(kube, settings, push=push, pull=pull)
    await reconciler_for(kube, settings, secrets)(WEB)
    assert kube.secret_calls == [("demo", SECRET, Credentials("reader", "read-pass"))]
    assert kube.get("Deployment", "demo", "web")["spec"]["template"]["spec"][
        "imagePullSecrets"
    ] == [{"name": SECRET}]


async def test_the_seeds_single_login_still_fills_the_pull_secret() -> None:
    settings = Settings.from_env({"IMAGE_CLONER_REGISTRY": BACKUP, **PUSH})
    kube = FakeKube()
    kube.add(deployment("web", {"app": "nginx:1"}))
    await Reconciler(
        kube=kube, copier=FakeCopier(), settings=settings, metrics=Metrics(health=Health())
    )(WEB)
    assert kube.secret_calls == [("demo", SECRET, Credentials("robot", "push-pass"))]


async def test_a_backed_up_workload_keeps_its_secret_current_without_reading_it_each_time(
    tmp_path: Path,
) -> None:
    settings = Settings.from_env(
        {"IMAGE_CLONER_REGISTRY": BACKUP, **PUSH, **pull_files(tmp_path, "read-pass")}
    )
    kube, clock = FakeKube(), Clock()
    kube.add(backed_up())
    secrets, pull = pull_secrets_for(kube, settings, clock)
    reconcile = reconciler_for(kube, settings, secrets)

    await reconcile(WEB)
    assert kube.secret_calls == [("demo", SECRET, Credentials("reader", "read-pass"))]
    assert secrets.namespaces == {"demo"}
    await reconcile(WEB)
    assert len(kube.secret_calls) == 1, "a quiet cluster does not read the Secret again"

    # Rotation: the file changes, the login's version moves on, the next pass writes it.
    (tmp_path / "pull-pass").write_text("read-pass-2\n")
    assert pull is not None
    assert pull.refresh()
    await reconcile(WEB)
    assert kube.secret_calls[-1] == ("demo", SECRET, Credentials("reader", "read-pass-2"))
    await reconcile(WEB)
    assert len(kube.secret_calls) == 2

    # Long quiet: checked again (a Secret deleted by hand comes back).
    clock.now += CONFIRMED_FOR
    await reconcile(WEB)
    assert len(kube.secret_calls) == 3
    assert kube.patches == [], "nothing to rewrite: the workload is untouched"


async def test_a_workload_without_our_secret_is_not_a_reason_to_write_one() -> None:
    settings = Settings.from_env({"IMAGE_CLONER_REGISTRY": BACKUP, **PUSH})
    kube = FakeKube()
    kube.add(deployment("web", {"app": f"{BACKUP}/nginx:1"}))  # made by hand, no Secret
    secrets, _ = pull_secrets_for(kube, settings)
    await reconciler_for(kube, settings, secrets)(WEB)
    assert kube.secret_calls == []


@pytest.mark.parametrize(("with_pull_login", "gauge"), [(False, 1.0), (True, 0.0)])
def test_handing_out_the_push_login_is_said_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, *, with_pull_login: bool, gauge: float
) -> None:
    env = {"IMAGE_CLONER_REGISTRY": BACKUP, **PUSH}
    if with_pull_login:
        env.update(pull_files(tmp_path, "read-pass"))
    settings = Settings.from_env(env)
    metrics = Metrics(health=Health())
    secrets, _ = pull_secrets_for(FakeKube(), settings)
    with caplog.at_level(logging.INFO):
        secrets.report_login(metrics)
    value = metrics.registry.get_sample_value("image_cloner_pull_secret_uses_push_credentials")
    assert value == gauge
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    if with_pull_login:
        assert warnings == []
    else:
        assert len(warnings) == 1
        assert "IMAGE_CLONER_PULL_USER" in str(getattr(warnings[0], "fields", {}))
    assert "push-pass" not in caplog.text


async def test_rewrites_in_one_namespace_share_one_check_within_a_few_seconds(
    tmp_path: Path,
) -> None:
    settings = Settings.from_env(
        {"IMAGE_CLONER_REGISTRY": BACKUP, **PUSH, **pull_files(tmp_path, "read-pass")}
    )
    kube, clock = FakeKube(), Clock()
    secrets, pull = pull_secrets_for(kube, settings, clock)
    # Concurrent rewrites of one namespace: one check.
    await asyncio.gather(*(secrets.ensure("demo") for _ in range(20)))
    await secrets.ensure("other")
    assert [call[0] for call in kube.secret_calls] == ["demo", "other"]
    clock.now += ENSURED_FOR - 1
    await secrets.ensure("demo")
    assert len(kube.secret_calls) == 2, "confirmed a moment ago"
    clock.now += 1  # a rewrite never trusts an older confirmation
    await secrets.ensure("demo")
    assert len(kube.secret_calls) == 3
    (tmp_path / "pull-pass").write_text("read-pass-2\n")
    assert pull is not None
    assert pull.refresh()
    await secrets.ensure("demo")  # a rotated login is written at once
    assert kube.secret_calls[-1] == ("demo", SECRET, Credentials("reader", "read-pass-2"))
