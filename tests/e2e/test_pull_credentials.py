"""Pull-only credentials in users' namespaces, on the test bed with a token-auth registry.

The backup registry here trusts the test token issuer, which grants `testuser` everything
and `reader` `pull` only. The controller pushes as testuser and writes the reader login
into the namespace's pull Secret: skopeo, given that Secret's login, can pull the backup
and cannot push to it. Logins given as files (a Secret volume as the kubelet writes it)
are followed: a rotated pull login reaches the namespace's Secret within a bounded time,
a rotated push login is used by the next copy (the issuer says whose login asked for the
token). With the push login alone, the controller says at start that it hands it out.

Each test runs a controller of its own, scoped to its namespace, as the examples'
ServiceAccount; the images come straight from the open registry (`127.0.0.1:PORT/...`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import skopeo
from tests.support.controller import ControllerProcess, wait_until
from tests.support.images import ImageSeeder
from tests.support.mounted_secret import MountedSecret
from tests.support.pki import TestPKI
from tests.support.registries import TEST_PASSWORD, TEST_USER, RunningRegistry
from tests.support.testbed import Testbed
from tests.support.token_issuer import READER_PASSWORD, READER_USER, TokenIssuer

PULL_SECRET = "image-cloner-pull"
CONTROLLER_NAMESPACE = "image-cloner-system"
TIMEOUT = 90.0
ROTATION_TIMEOUT = 60.0
"""A rotated file is seen within `credentials.POLL_INTERVAL` (5 s); the rest is one reconcile."""
KUBECTL_POLL = 0.5
USES_PUSH = "image_cloner_pull_secret_uses_push_credentials"


@pytest.fixture
def start_controller(
    tmp_path: Path, sa_kubeconfig: Path, token_registry: RunningRegistry, test_pki: TestPKI
) -> Iterator[Any]:
    """`start_controller(namespace, **env)`: a controller watching only `namespace`."""
    started: list[ControllerProcess] = []

    def start(namespace: str, **env: str) -> ControllerProcess:
        process = ControllerProcess(
            tmp_path / f"controller-{len(started)}",
            kubeconfig=sa_kubeconfig,
            env={
                "IMAGE_CLONER_REGISTRY": token_registry.host,
                "IMAGE_CLONER_CA_FILE": str(test_pki.ca_cert),
                "IMAGE_CLONER_NAMESPACE": namespace,
                "IMAGE_CLONER_POD_NAMESPACE": CONTROLLER_NAMESPACE,
                **env,
            },
        )
        started.append(process)
        process.start()
        return process

    try:
        yield start
    finally:
        for process in started:
            code = process.stop()
            assert code == 0, f"controller exited {code}:\n{process.log_text()[-3000:]}"


def deploy(testbed: Testbed, namespace: str, name: str, image: str) -> None:
    manifest = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "main", "image": image}]},
            },
        },
    }
    testbed.kubectl("apply", "-f", "-", input=json.dumps(manifest))


def rewritten_image(testbed: Testbed, namespace: str, name: str, backup: str) -> str:
    """Wait until the Deployment points into the backup registry; its image then."""

    def image() -> str | None:
        obj = json.loads(
            testbed.kubectl("get", "deployment", name, "-n", namespace, "-o", "json").stdout
        )
        found: str = obj["spec"]["template"]["spec"]["containers"][0]["image"]
        return found if found.startswith(f"{backup}/") else None

    return wait_until(
        image, timeout=TIMEOUT, what=f"{namespace}/{name} rewritten", interval=KUBECTL_POLL
    )


def secret_login(testbed: Testbed, namespace: str, host: str) -> tuple[str, str] | None:
    """(username, password) the namespace's pull Secret holds for `host`, None if none."""
    result = testbed.kubectl(
        "get", "secret", PULL_SECRET, "-n", namespace, "-o", "json", check=False
    )
    if result.returncode != 0:
        return None
    secret = json.loads(result.stdout)
    config = json.loads(base64.b64decode(secret["data"][".dockerconfigjson"]))
    entry = config["auths"][host]
    user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
    assert (user, password) == (entry["username"], entry["password"])
    return user, password


def wait_for_secret_login(
    testbed: Testbed, namespace: str, host: str, wanted: tuple[str, str], *, timeout: float
) -> None:
    wait_until(
        lambda: secret_login(testbed, namespace, host) == wanted,
        timeout=timeout,
        what=f"pull Secret in {namespace} holding {wanted[0]}'s login",
        interval=KUBECTL_POLL,
    )


def repository_of(image: str) -> str:
    """`host/path` of `host/path:tag@sha256:…` (the pinned form of a rewrite)."""
    name = image.partition("@")[0]
    head, _, last = name.rpartition("/")
    return f"{head}/{last.partition(':')[0]}"


def by_digest(image: str) -> str:
    """`repo@digest`: skopeo 1.9 takes no reference with both a tag and a digest."""
    digest = image.partition("@")[2]
    return f"{repository_of(image)}@{digest}" if digest else image


def pull_with(backup: RunningRegistry, login: tuple[str, str], image: str) -> bytes:
    """`skopeo inspect --raw` of `image` with this login, as a kubelet would pull it."""
    user, password = login
    return skopeo.run(
        "inspect",
        "--raw",
        f"--creds={user}:{password}",
        f"--cert-dir={backup.cert_dir}",
        f"docker://{by_digest(image)}",
    )


def push_with(backup: RunningRegistry, login: tuple[str, str], image: str) -> None:
    """Try to overwrite `image` (copy it onto another tag) with this login."""
    user, password = login
    repository = repository_of(image)
    skopeo.run(
        "copy",
        "--quiet",
        f"--src-creds={TEST_USER}:{TEST_PASSWORD}",
        f"--src-cert-dir={backup.cert_dir}",
        f"--dest-creds={user}:{password}",
        f"--dest-cert-dir={backup.cert_dir}",
        f"docker://{by_digest(image)}",
        f"docker://{repository}:overwritten",
    )


def tokens_for(issuer: TokenIssuer, user: str, action: str) -> int:
    """Tokens the issuer gave `user` that grant `action` on some repository."""
    return sum(
        1
        for issued in issuer.stats()["issued"]
        if issued["user"] == user and any(action in a["actions"] for a in issued["access"])
    )


def skopeo_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_the_pull_secret_holds_a_login_that_can_pull_and_cannot_push(
    *,
    testbed: Testbed,
    namespace: str,
    start_controller: Any,
    token_registry: RunningRegistry,
    open_registry: RunningRegistry,
    seed_image: ImageSeeder,
) -> None:
    app = unique("app")
    seeded = seed_image(open_registry, f"{app}:1", "index", seed=app)
    controller = start_controller(
        namespace,
        IMAGE_CLONER_USER=TEST_USER,
        IMAGE_CLONER_PASS=TEST_PASSWORD,
        IMAGE_CLONER_PULL_USER=READER_USER,
        IMAGE_CLONER_PULL_PASS=READER_PASSWORD,
    )
    deploy(testbed, namespace, "web", open_registry.ref(f"{app}:1"))
    image = rewritten_image(testbed, namespace, "web", token_registry.host)

    login = secret_login(testbed, namespace, token_registry.host)
    assert login == (READER_USER, READER_PASSWORD), "the pull Secret holds the pull-only login"
    pulled = pull_with(token_registry, login, image)
    assert skopeo_digest(pulled) == seeded.digest
    with pytest.raises(skopeo.SkopeoError) as refused:
        push_with(token_registry, login, image)
    assert (
        "denied" in refused.value.stderr.lower() or "unauthorized" in refused.value.stderr.lower()
    )
    with pytest.raises(skopeo.SkopeoError):
        pull_with(token_registry, login, repository_of(image) + ":overwritten")

    assert controller.metric(USES_PUSH) == 0
    assert not controller.find("pull secrets get the push credentials"), "no warning needed"
    assert READER_PASSWORD not in controller.log_text()


def test_rotated_login_files_reach_the_pull_secret_and_the_next_copy(
    *,
    tmp_path: Path,
    testbed: Testbed,
    namespace: str,
    start_controller: Any,
    token_registry: RunningRegistry,
    token_issuer: TokenIssuer,
    open_registry: RunningRegistry,
    seed_image: ImageSeeder,
) -> None:
    first, second = unique("first"), unique("second")
    seed_image(open_registry, f"{first}:1", "single", seed=first)
    second_image = seed_image(open_registry, f"{second}:1", "single", seed=second)
    push = MountedSecret(tmp_path / "push")
    push.write(username=TEST_USER, password=f"{TEST_PASSWORD}\n")
    pull = MountedSecret(tmp_path / "pull")
    pull.write(username=READER_USER, password=f"{READER_PASSWORD}\n")
    controller = start_controller(
        namespace,
        IMAGE_CLONER_USER_FILE=str(push.path("username")),
        IMAGE_CLONER_PASS_FILE=str(push.path("password")),
        IMAGE_CLONER_PULL_USER_FILE=str(pull.path("username")),
        IMAGE_CLONER_PULL_PASS_FILE=str(pull.path("password")),
    )
    host = token_registry.host
    deploy(testbed, namespace, "first", open_registry.ref(f"{first}:1"))
    first_target = rewritten_image(testbed, namespace, "first", host)
    assert secret_login(testbed, namespace, host) == (READER_USER, READER_PASSWORD)

    # The pull login is rotated (a new pull-only user, as a registry admin would add one):
    # the namespace's Secret follows without any change to the workload.
    new_reader = (unique("reader"), uuid.uuid4().hex)
    token_issuer.add_user(*new_reader, actions=["pull"])
    pull.write(username=new_reader[0], password=f"{new_reader[1]}\n")
    wait_for_secret_login(testbed, namespace, host, new_reader, timeout=ROTATION_TIMEOUT)
    controller.wait_for_line("pull secret updated", namespace=namespace)
    pull_with(token_registry, new_reader, first_target)
    with pytest.raises(skopeo.SkopeoError):
        push_with(token_registry, new_reader, first_target)

    # The push login is rotated: the next copy asks the issuer with the new login.
    new_pusher = (unique("pusher"), uuid.uuid4().hex)
    token_issuer.add_user(*new_pusher, actions=["pull", "push"])
    push.write(username=new_pusher[0], password=new_pusher[1])
    controller.wait_for_line(
        "credentials changed, using the new ones", login="push login", timeout=ROTATION_TIMEOUT
    )
    assert tokens_for(token_issuer, new_pusher[0], "push") == 0
    deploy(testbed, namespace, "second", open_registry.ref(f"{second}:1"))
    second_target = rewritten_image(testbed, namespace, "second", host)
    assert tokens_for(token_issuer, new_pusher[0], "push") >= 1
    assert skopeo_digest(pull_with(token_registry, new_reader, second_target)) == (
        second_image.digest
    )

    log = controller.log_text()
    for password in (TEST_PASSWORD, READER_PASSWORD, new_reader[1], new_pusher[1]):
        assert password not in log


def test_with_the_push_login_alone_the_controller_says_it_hands_it_out(
    namespace: str, start_controller: Any
) -> None:
    controller = start_controller(
        namespace, IMAGE_CLONER_USER=TEST_USER, IMAGE_CLONER_PASS=TEST_PASSWORD
    )
    line = controller.wait_for_line("pull secrets get the push credentials", timeout=TIMEOUT)
    assert line["level"] == "warning"
    assert line["pull_secret"] == PULL_SECRET
    assert controller.metric(USES_PUSH) == 1
