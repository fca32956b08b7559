"""Private source images end to end: the kubelet's credential sources, and no confused deputy.

A private upstream (`docker-registry` with htpasswd and TLS) holds the images; the backup is
another htpasswd registry. Each test runs a controller of its own, scoped to its namespace,
as the examples' ServiceAccount (examples/rbac.yml + rbac-pull-secrets.yml); the tests that
read users' Secrets add examples/rbac-source-secrets.yml (applied by a module fixture, so the
least-privilege tests, which come first, run without it, and removed at the end).
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from image_cloner.mapping import parse_backup_location, target_for
from image_cloner.oci.references import parse_reference
from tests.support.controller import ControllerProcess, wait_until
from tests.support.credential_plugin import calls, write_config, write_plugin
from tests.support.images import ImageKind, ImageSeeder
from tests.support.pki import TestPKI
from tests.support.registries import RegistryKind, RunningRegistry
from tests.support.testbed import Testbed

ROOT = Path(__file__).resolve().parents[2]
SOURCE_SECRETS_RBAC = ROOT / "examples" / "rbac-source-secrets.yml"
CONTROLLER_NAMESPACE = "image-cloner-system"
SERVICE_ACCOUNT = f"system:serviceaccount:{CONTROLLER_NAMESPACE}:image-cloner"
TIMEOUT = 90.0
POLL = 0.3


@pytest.fixture(scope="module")
def private(
    tmp_path_factory: pytest.TempPathFactory, test_pki: TestPKI
) -> Iterator[RunningRegistry]:
    """The private upstream: nothing is pullable without testuser's password."""
    registry = RunningRegistry(
        tmp_path_factory.mktemp("private"), kind=RegistryKind.HTPASSWD, pki=test_pki
    )
    registry.start()
    try:
        yield registry
    finally:
        registry.stop()


@dataclass
class World:
    testbed: Testbed
    backup: RunningRegistry
    private: RunningRegistry
    seed: ImageSeeder
    pki: TestPKI
    sa_kubeconfig: Path
    root: Path

    def env(self, namespace: str, *, push_login: bool = True, **extra: str) -> dict[str, str]:
        login = {"IMAGE_CLONER_USER": str(self.backup.username)}
        login["IMAGE_CLONER_PASS"] = str(self.backup.password)
        return {
            "IMAGE_CLONER_REGISTRY": f"localhost:{self.backup.port}",
            **(login if push_login else {}),
            "IMAGE_CLONER_CA_FILE": str(self.pki.ca_cert),
            "IMAGE_CLONER_POD_NAMESPACE": CONTROLLER_NAMESPACE,
            "IMAGE_CLONER_NAMESPACE": namespace,
            **extra,
        }

    def controller(
        self, namespace: str, *, push_login: bool = True, **extra: str
    ) -> ControllerProcess:
        workdir = self.root / f"controller-{uuid.uuid4().hex[:6]}"
        env = self.env(namespace, push_login=push_login, **extra)
        return ControllerProcess(workdir, kubeconfig=self.sa_kubeconfig, env=env)

    def image(self, repository: str) -> str:
        """A fresh private image `<private>/<repository>-<suffix>:1`."""
        name = f"{repository}-{uuid.uuid4().hex[:6]}:1"
        self.seed(self.private, name, ImageKind.SINGLE)
        return self.private.ref(name)

    def backup_of(self, image: str) -> str:
        location = parse_backup_location(f"localhost:{self.backup.port}")
        return str(target_for(parse_reference(image), location))

    def namespace(self) -> str:
        name = f"private-{uuid.uuid4().hex[:8]}"
        self.testbed.create_namespace(name)
        return name

    def pull_secret(self, namespace: str, name: str, *, password: str | None = None) -> None:
        """A docker-registry Secret for the private upstream (created, or replaced)."""
        password = password or str(self.private.password)
        config = {
            "auths": {self.private.host: {"username": self.private.username, "password": password}}
        }
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
            "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": base64.b64encode(json.dumps(config).encode()).decode()},
        }
        self.testbed.kubectl("apply", "-f", "-", input=json.dumps(secret))

    def deploy(
        self,
        namespace: str,
        name: str,
        image: str,
        *,
        secrets: tuple[str, ...] = (),
        account: str | None = None,
    ) -> None:
        spec: dict[str, Any] = {"containers": [{"name": "app", "image": image}]}
        if secrets:
            spec["imagePullSecrets"] = [{"name": s} for s in secrets]
        if account:
            spec["serviceAccountName"] = account
        deployment = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}}, "spec": spec},
            },
        }
        self.testbed.kubectl("apply", "-f", "-", input=json.dumps(deployment))

    def image_of(self, namespace: str, name: str) -> str:
        obj = json.loads(
            self.testbed.kubectl("get", "deployment", name, "-n", namespace, "-o", "json").stdout
        )
        return str(obj["spec"]["template"]["spec"]["containers"][0]["image"])

    def wait_rewritten(self, namespace: str, name: str, image: str) -> None:
        wanted = self.backup_of(image)

        def rewritten() -> bool:
            # Pinned (`…@sha256:`): KWOK reports no digest, so the tag's is what is pinned.
            current = self.image_of(namespace, name)
            return current == wanted or current.startswith(f"{wanted}@sha256:")

        wait_until(
            rewritten,
            timeout=TIMEOUT,
            what=f"{namespace}/{name} → {wanted}",
            interval=POLL,
        )

    def clone_failed(self, namespace: str, name: str, *, containing: str) -> str:
        """The message of a CloneFailed Event on the Deployment that contains `containing`."""

        def found() -> str | None:
            items = json.loads(
                self.testbed.kubectl("get", "events", "-n", namespace, "-o", "json").stdout
            )
            for event in items["items"]:
                message = str(event.get("message", ""))
                if (
                    event["involvedObject"].get("name") == name
                    and event.get("reason") == "CloneFailed"
                    and containing in message
                ):
                    return message
            return None

        return wait_until(
            found,
            timeout=TIMEOUT,
            what=f"CloneFailed on {namespace}/{name} with {containing!r}",
            interval=POLL,
        )


@pytest.fixture(scope="module")
def world(
    *,
    testbed: Testbed,
    backup: RunningRegistry,
    private: RunningRegistry,
    seed_image: ImageSeeder,
    test_pki: TestPKI,
    sa_kubeconfig: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> World:
    return World(
        testbed,
        backup,
        private,
        seed_image,
        test_pki,
        sa_kubeconfig,
        tmp_path_factory.mktemp("private-images"),
    )


def can_get_secrets(testbed: Testbed) -> bool:
    return (
        testbed.kubectl(
            "auth",
            "can-i",
            "get",
            "secrets",
            "-n",
            "default",
            f"--as={SERVICE_ACCOUNT}",
            check=False,
        ).returncode
        == 0
    )


@pytest.fixture(scope="module")
def source_secrets_rbac(world: World) -> Iterator[None]:
    """examples/rbac-source-secrets.yml applied (for the rest of this module)."""
    world.testbed.kubectl("apply", "-f", str(SOURCE_SECRETS_RBAC))
    wait_until(
        lambda: can_get_secrets(world.testbed),
        timeout=30,
        what="rbac-source-secrets.yml",
        interval=POLL,
    )
    try:
        yield
    finally:
        world.testbed.kubectl(
            "delete", "-f", str(SOURCE_SECRETS_RBAC), "--ignore-not-found", check=False
        )


# --- least privilege: no right on users' Secrets ----------------------------------------


def test_without_the_opt_in_secrets_are_not_read_and_the_event_says_what_would_fix_it(
    world: World,
) -> None:
    assert not can_get_secrets(world.testbed)
    namespace = world.namespace()
    image = world.image("team-a/app")
    world.pull_secret(namespace, "regcred")
    world.deploy(namespace, "app", image, secrets=("regcred",))
    with world.controller(namespace) as controller:
        message = world.clone_failed(
            namespace, "app", containing="IMAGE_CLONER_READ_PULL_SECRETS=true"
        )
        assert "examples/rbac-source-secrets.yml" in message
        assert "anonymous access: refused (401)" in message
        assert world.image_of(namespace, "app") == image
        assert str(world.private.password) not in controller.log_text()


def test_the_opt_in_without_its_rbac_file_says_forbidden(world: World) -> None:
    namespace = world.namespace()
    image = world.image("team-a/app")
    world.pull_secret(namespace, "regcred")
    world.deploy(namespace, "app", image, secrets=("regcred",))
    with world.controller(namespace, IMAGE_CLONER_READ_PULL_SECRETS="true"):
        world.clone_failed(
            namespace, "app", containing=f"Secret {namespace}/regcred (imagePullSecrets): forbidden"
        )
        assert world.image_of(namespace, "app") == image


def test_the_auth_file_serves_every_namespace_without_any_secret_rights(
    world: World, tmp_path: Path
) -> None:
    namespace = world.namespace()
    image = world.image("file-team/app")
    # The key's path limits it to file-team/: the kubelet's prefix rule.
    entry = {"username": world.private.username, "password": world.private.password}
    auth = tmp_path / "auth.json"
    auth.write_text(json.dumps({"auths": {f"{world.private.host}/file-team": entry}}))
    other = world.image("other-team/app")
    world.deploy(namespace, "app", image)
    world.deploy(namespace, "other", other)
    with world.controller(namespace, IMAGE_CLONER_SOURCE_AUTH_FILE=str(auth)):
        world.wait_rewritten(namespace, "app", image)
        message = world.clone_failed(namespace, "other", containing="anonymous access: refused")
        assert str(world.private.password) not in message
        assert world.image_of(namespace, "other") == other


def test_a_credential_provider_plugin_and_its_cache_duration(world: World, tmp_path: Path) -> None:
    namespace = world.namespace()
    counter = tmp_path / "calls"
    write_plugin(tmp_path / "bin")
    config = write_config(
        tmp_path / "credential-providers.yaml",
        match_images=[world.private.host],
        env={
            "PLUGIN_CALLS": str(counter),
            "PLUGIN_USER": str(world.private.username),
            "PLUGIN_PASSWORD": str(world.private.password),
            "PLUGIN_CACHE_DURATION": "1h",
            "PLUGIN_CACHE_KEY_TYPE": "Registry",
        },
    )
    first, second = world.image("plugin-team/one"), world.image("plugin-team/two")
    world.deploy(namespace, "one", first)
    with world.controller(
        namespace,
        IMAGE_CLONER_CREDENTIAL_PROVIDER_CONFIG=str(config),
        IMAGE_CLONER_CREDENTIAL_PROVIDER_BIN_DIR=str(tmp_path / "bin"),
    ) as controller:
        world.wait_rewritten(namespace, "one", first)
        world.deploy(namespace, "two", second)
        world.wait_rewritten(namespace, "two", second)
        # cacheKeyType Registry + cacheDuration 1h: one run served both images.
        assert len(calls(counter)) == 1
        assert str(world.private.password) not in controller.log_text()


def test_the_backup_login_from_a_credential_provider_is_renewed_and_never_handed_out(
    world: World, tmp_path: Path
) -> None:
    """ECR as the backup: the push login is a plugin's short-lived token, not a Secret."""
    namespace = world.namespace()
    backup_host = f"localhost:{world.backup.port}"
    counter, login = tmp_path / "calls", tmp_path / "login"
    login.write_text(f"{world.backup.username}\n{world.backup.password}\n")
    write_plugin(tmp_path / "bin")
    config = write_config(
        tmp_path / "credential-providers.yaml",
        match_images=[backup_host],
        env={
            "PLUGIN_CALLS": str(counter),
            "PLUGIN_LOGIN_FILE": str(login),
            "PLUGIN_CACHE_DURATION": "1s",  # renewed at the floor, every 5 s
        },
    )
    # The source images are private too: the auth file serves them, the plugin only the backup.
    entry = {"username": world.private.username, "password": world.private.password}
    auth = tmp_path / "auth.json"
    auth.write_text(json.dumps({"auths": {world.private.host: entry}}))
    first, second = world.image("ecr-team/one"), world.image("ecr-team/two")
    world.deploy(namespace, "one", first)
    with world.controller(
        namespace,
        push_login=False,
        IMAGE_CLONER_CREDENTIAL_PROVIDER_CONFIG=str(config),
        IMAGE_CLONER_CREDENTIAL_PROVIDER_BIN_DIR=str(tmp_path / "bin"),
        IMAGE_CLONER_BACKUP_CREDENTIAL_PROVIDER="test-credential-provider",
        IMAGE_CLONER_SOURCE_AUTH_FILE=str(auth),
    ) as controller:
        world.wait_rewritten(namespace, "one", first)
        wait_until(
            lambda: len(calls(counter)) >= 3,
            timeout=TIMEOUT,
            what="the plugin run again as its answers run out",
            interval=POLL,
        )
        world.deploy(namespace, "two", second)
        world.wait_rewritten(namespace, "two", second)
        assert set(calls(counter)) == {backup_host}  # asked for the backup only
        # The token went to the backup registry only: no pull Secret holds it.
        secret = world.testbed.kubectl(
            "get", "secret", "image-cloner-pull", "-n", namespace, check=False
        )
        assert secret.returncode != 0
        assert "NotFound" in secret.stderr
        deployment = json.loads(
            world.testbed.kubectl("get", "deployment", "one", "-n", namespace, "-o", "json").stdout
        )
        assert "imagePullSecrets" not in deployment["spec"]["template"]["spec"]
        log = controller.log_text()
        assert "push login from credential provider" in log
        assert str(world.backup.password) not in log


# --- the workload's own pull Secrets (opt-in) -----------------------------------------------


@pytest.mark.usefixtures("source_secrets_rbac")
def test_pull_secret_on_the_pod_template(world: World) -> None:
    namespace = world.namespace()
    image = world.image("team-a/app")
    world.pull_secret(namespace, "regcred")
    world.deploy(namespace, "app", image, secrets=("regcred",))
    with world.controller(namespace, IMAGE_CLONER_READ_PULL_SECRETS="true"):
        world.wait_rewritten(namespace, "app", image)


@pytest.mark.usefixtures("source_secrets_rbac")
def test_pull_secret_on_the_service_account_only(world: World) -> None:
    namespace = world.namespace()
    image = world.image("team-a/app")
    world.pull_secret(namespace, "sa-cred")
    world.testbed.kubectl("create", "serviceaccount", "builder", "-n", namespace)
    world.testbed.kubectl(
        "patch",
        "serviceaccount",
        "builder",
        "-n",
        namespace,
        "-p",
        json.dumps({"imagePullSecrets": [{"name": "sa-cred"}]}),
    )
    world.deploy(namespace, "app", image, account="builder")
    with world.controller(namespace, IMAGE_CLONER_READ_PULL_SECRETS="true"):
        world.wait_rewritten(namespace, "app", image)


@pytest.mark.usefixtures("source_secrets_rbac")
def test_wrong_password_names_the_secret_then_a_rotated_secret_is_used(world: World) -> None:
    namespace = world.namespace()
    image = world.image("team-a/app")
    wrong = f"wrong-{uuid.uuid4().hex[:8]}"
    world.pull_secret(namespace, "regcred", password=wrong)
    world.deploy(namespace, "app", image, secrets=("regcred",))
    with world.controller(namespace, IMAGE_CLONER_READ_PULL_SECRETS="true") as controller:
        message = world.clone_failed(
            namespace, "app", containing=f"Secret {namespace}/regcred (imagePullSecrets): refused"
        )
        assert wrong not in message
        assert world.image_of(namespace, "app") == image
        world.pull_secret(namespace, "regcred")  # rotated: the next attempt reads it again
        world.wait_rewritten(namespace, "app", image)
        assert wrong not in controller.log_text()


@pytest.mark.usefixtures("source_secrets_rbac")
def test_a_missing_secret_is_named(world: World) -> None:
    namespace = world.namespace()
    image = world.image("team-a/app")
    world.deploy(namespace, "app", image, secrets=("absent",))
    with world.controller(namespace, IMAGE_CLONER_READ_PULL_SECRETS="true"):
        world.clone_failed(
            namespace, "app", containing=f"Secret {namespace}/absent (imagePullSecrets): not found"
        )
        assert world.image_of(namespace, "app") == image


@pytest.mark.usefixtures("source_secrets_rbac")
def test_a_backup_made_for_one_namespace_is_not_handed_to_another(world: World) -> None:
    team_a, team_b = world.namespace(), world.namespace()
    image = world.image("team-a/app")
    world.pull_secret(team_a, "regcred")
    world.deploy(team_a, "app", image, secrets=("regcred",))
    # B names a Secret of the same name but does not have it.
    world.deploy(team_b, "app", image, secrets=("regcred",))
    with world.controller(team_a, IMAGE_CLONER_READ_PULL_SECRETS="true"):
        world.wait_rewritten(team_a, "app", image)
    with world.controller(team_b, IMAGE_CLONER_READ_PULL_SECRETS="true") as controller_b:
        message = world.clone_failed(
            team_b, "app", containing=f"not pullable by namespace {team_b}"
        )
        assert f"Secret {team_b}/regcred (imagePullSecrets): not found" in message
        assert "not rewritten" in message
        # The backup exists (A's copy), yet B stays on its own image.
        assert world.image_of(team_b, "app") == image
        assert str(world.private.password) not in controller_b.log_text()
