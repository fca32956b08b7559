"""Settings from the environment: every variable, its default, and every error as one clear line."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from image_cloner.mapping import parse_backup_location
from image_cloner.oci.options import Credentials, ReferrersPolicy
from image_cloner.settings import (
    DEFAULT_PULL_SECRET,
    ConfigError,
    LeaderElection,
    Settings,
    parse_credentials,
    registry_options_from_env,
)
from tests.support.credential_plugin import write_config, write_plugin
from tests.support.pki import make_pki

PASSWORD = "s3cr3t-Pa55word"
BASE = {"IMAGE_CLONER_REGISTRY": "localhost:5000"}
LOGIN = {"IMAGE_CLONER_USER": "testuser", "IMAGE_CLONER_PASS": PASSWORD}


def settings(**env: str) -> Settings:
    return Settings.from_env({**BASE, **env})


def config_error(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    message = str(caught.value)
    assert "\n" not in message
    assert PASSWORD not in message
    return message


@pytest.fixture(scope="module")
def ca_pem(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki")).ca_cert


def test_defaults() -> None:
    s = settings()
    assert s.backup == parse_backup_location("localhost:5000")
    assert s.ignored_namespaces == {"kube-system"}
    assert (s.namespace, s.pod_namespace) == (None, None)
    assert s.pull_secret_name is None  # no credentials: nothing to put in a Secret
    assert (s.metrics_port, s.log_format) == (8080, "text")
    options = s.registry_options
    assert dict(options.credentials) == {}
    assert (options.ca_file, options.insecure_hosts, dict(options.mirrors)) == (
        None,
        frozenset(),
        {},
    )
    assert options.max_concurrent_transfers == 4
    assert s.backup_credentials is None


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings().metrics_port = 1  # type: ignore[misc]


def test_registry_with_prefix() -> None:
    s = settings(IMAGE_CLONER_REGISTRY=" Registry.Example.com/backup ")
    assert (s.backup.registry.host, s.backup.prefix) == ("registry.example.com", "backup")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "IMAGE_CLONER_REGISTRY is not set"),
        ({"IMAGE_CLONER_REGISTRY": "  "}, "IMAGE_CLONER_REGISTRY is not set"),
        ({"IMAGE_CLONER_REGISTRY": "registry"}, "IMAGE_CLONER_REGISTRY: invalid backup location"),
        (
            {"IMAGE_CLONER_REGISTRY": "http://x.io"},
            "IMAGE_CLONER_REGISTRY: invalid backup location",
        ),
        ({"IMAGE_CLONER_REGISTRY": "docker.io"}, "Docker Hub needs a namespace"),
    ],
)
def test_registry_errors(env: dict[str, str], expected: str) -> None:
    assert expected in config_error(env)


def test_login_is_keyed_by_the_backup_host_and_names_the_pull_secret() -> None:
    s = settings(IMAGE_CLONER_REGISTRY="Registry.Example.com:5000/backup", **LOGIN)
    assert dict(s.registry_options.credentials) == {
        "registry.example.com:5000": Credentials("testuser", PASSWORD)
    }
    assert s.backup_credentials == Credentials("testuser", PASSWORD)
    assert s.pull_secret_name == DEFAULT_PULL_SECRET
    assert PASSWORD not in repr(s)


def test_password_keeps_blanks_but_loses_a_trailing_newline() -> None:
    s = settings(IMAGE_CLONER_USER="u", IMAGE_CLONER_PASS=" pa ss \n")
    assert s.backup_credentials == Credentials("u", " pa ss ")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"IMAGE_CLONER_USER": "testuser"},
            "IMAGE_CLONER_USER is set but IMAGE_CLONER_PASS is not",
        ),
        (
            {"IMAGE_CLONER_USER": "testuser", "IMAGE_CLONER_PASS": ""},
            "IMAGE_CLONER_USER is set but IMAGE_CLONER_PASS is not",
        ),
        ({"IMAGE_CLONER_PASS": PASSWORD}, "IMAGE_CLONER_PASS is set but IMAGE_CLONER_USER is not"),
        (
            {"IMAGE_CLONER_USER": " ", "IMAGE_CLONER_PASS": PASSWORD},
            "IMAGE_CLONER_PASS is set but IMAGE_CLONER_USER is not",
        ),
    ],
)
def test_login_both_or_neither(env: dict[str, str], expected: str) -> None:
    assert expected in config_error({**BASE, **env})


def test_ca_file(ca_pem: Path, tmp_path: Path) -> None:
    assert settings(IMAGE_CLONER_CA_FILE=str(ca_pem)).registry_options.ca_file == ca_pem
    missing = tmp_path / "nope.pem"
    assert config_error({**BASE, "IMAGE_CLONER_CA_FILE": str(missing)}) == (
        f"IMAGE_CLONER_CA_FILE: no such file: {missing}"
    )
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    assert "holds no PEM certificates" in config_error({**BASE, "IMAGE_CLONER_CA_FILE": str(junk)})
    assert "no such file" in config_error({**BASE, "IMAGE_CLONER_CA_FILE": str(tmp_path)})


def test_insecure_registries() -> None:
    s = settings(IMAGE_CLONER_INSECURE_REGISTRIES=" Kind-Registry:5000, 10.0.0.1:5000 ,,[::1]:5001")
    assert s.registry_options.insecure_hosts == {
        "kind-registry:5000",
        "10.0.0.1:5000",
        "[::1]:5001",
    }
    message = config_error({**BASE, "IMAGE_CLONER_INSECURE_REGISTRIES": "ok.io,http://bad.io"})
    assert message.startswith(
        "IMAGE_CLONER_INSECURE_REGISTRIES: invalid registry host 'http://bad.io'"
    )


def test_mirrors() -> None:
    s = settings(
        IMAGE_CLONER_REGISTRY_MIRRORS=(
            "docker.io=https://mirror.local:5001, quay.io = http://127.0.0.1:5002/,"
            "index.docker.io=HTTPS://Mirror2.local/v2/proxy,docker.io=https://mirror.local:5001"
        )
    )
    assert dict(s.registry_options.mirrors) == {
        "docker.io": ("https://mirror.local:5001", "https://mirror2.local/v2/proxy"),
        "quay.io": ("http://127.0.0.1:5002",),
    }


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("docker.io", "expected host=URL, got 'docker.io'"),
        ("=https://m.local", "expected host=URL"),
        ("docker.io=", "expected host=URL"),
        ("docker.io=mirror.local:5001", "is not an http:// or https:// URL"),
        ("docker.io=ftp://mirror.local", "is not an http:// or https:// URL"),
        ("docker.io=https://", "is not an http:// or https:// URL"),
        ("docker.io=https://m.local?x=1", "must not have a query or fragment"),
        ("docker.io=https://bad_host.local", "has an invalid host"),
        ("docker.io=https://m.local:99999", "has an invalid host"),
        ("bad_host=https://m.local", "IMAGE_CLONER_REGISTRY_MIRRORS: invalid registry host"),
        (f"docker.io=https://user:{PASSWORD}@m.local", "carries credentials"),
        (f"docker.io https://user:{PASSWORD}@m.local", "expected host=URL"),
    ],
)
def test_mirror_errors(value: str, expected: str) -> None:
    message = config_error({**BASE, "IMAGE_CLONER_REGISTRY_MIRRORS": value})
    assert message.startswith("IMAGE_CLONER_REGISTRY_MIRRORS: ")
    assert expected in message


@pytest.mark.parametrize(
    ("env", "ignored"),
    [
        ({}, {"kube-system"}),
        (
            {"IMAGE_CLONER_POD_NAMESPACE": "image-cloner-system"},
            {"kube-system", "image-cloner-system"},
        ),
        ({"IMAGE_CLONER_IGNORE_NAMESPACES": "team-a, team-b"}, {"team-a", "team-b"}),
        (
            {"IMAGE_CLONER_IGNORE_NAMESPACES": "team-a", "IMAGE_CLONER_POD_NAMESPACE": "ic"},
            {"team-a", "ic"},
        ),
        ({"IMAGE_CLONER_IGNORE_NAMESPACES": " , "}, {"kube-system"}),
    ],
)
def test_ignored_namespaces(env: dict[str, str], ignored: set[str]) -> None:
    s = settings(**env)
    assert s.ignored_namespaces == ignored
    assert s.pod_namespace == env.get("IMAGE_CLONER_POD_NAMESPACE")


def test_watch_one_namespace() -> None:
    assert settings(IMAGE_CLONER_NAMESPACE="demo-system").namespace == "demo-system"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"IMAGE_CLONER_NAMESPACE": "Demo"},
            "IMAGE_CLONER_NAMESPACE: 'Demo' is not a namespace name",
        ),
        ({"IMAGE_CLONER_NAMESPACE": "a" * 64}, "IMAGE_CLONER_NAMESPACE: "),
        ({"IMAGE_CLONER_POD_NAMESPACE": "x_y"}, "IMAGE_CLONER_POD_NAMESPACE: 'x_y' is not"),
        (
            {"IMAGE_CLONER_IGNORE_NAMESPACES": "ok,-bad"},
            "IMAGE_CLONER_IGNORE_NAMESPACES: '-bad' is not",
        ),
        (
            {"IMAGE_CLONER_NAMESPACE": "kube-system"},
            "IMAGE_CLONER_NAMESPACE: namespace 'kube-system' is also ignored",
        ),
        (
            {"IMAGE_CLONER_NAMESPACE": "ic", "IMAGE_CLONER_POD_NAMESPACE": "ic"},
            "IMAGE_CLONER_NAMESPACE: namespace 'ic' is also ignored",
        ),
    ],
)
def test_namespace_errors(env: dict[str, str], expected: str) -> None:
    assert expected in config_error({**BASE, **env})


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({}, DEFAULT_PULL_SECRET),
        ({"IMAGE_CLONER_PULL_SECRET": "backup-pull.v1"}, "backup-pull.v1"),
        ({"IMAGE_CLONER_MANAGE_PULL_SECRET": "true"}, DEFAULT_PULL_SECRET),
        ({"IMAGE_CLONER_MANAGE_PULL_SECRET": " YES "}, DEFAULT_PULL_SECRET),
        ({"IMAGE_CLONER_MANAGE_PULL_SECRET": "false"}, None),
        ({"IMAGE_CLONER_MANAGE_PULL_SECRET": "0", "IMAGE_CLONER_PULL_SECRET": "x"}, None),
        ({"IMAGE_CLONER_MANAGE_PULL_SECRET": "Off"}, None),
    ],
)
def test_pull_secret(env: dict[str, str], name: str | None) -> None:
    assert settings(**LOGIN, **env).pull_secret_name == name


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"IMAGE_CLONER_PULL_SECRET": "Pull"},
            "IMAGE_CLONER_PULL_SECRET: 'Pull' is not a Secret name",
        ),
        ({"IMAGE_CLONER_PULL_SECRET": "a" * 254}, "IMAGE_CLONER_PULL_SECRET: "),
        (
            {"IMAGE_CLONER_MANAGE_PULL_SECRET": "maybe"},
            "IMAGE_CLONER_MANAGE_PULL_SECRET: expected true or false, got 'maybe'",
        ),
    ],
)
def test_pull_secret_errors(env: dict[str, str], expected: str) -> None:
    assert expected in config_error({**BASE, **env})


@pytest.mark.parametrize(
    ("env", "port", "transfers"),
    [
        ({"IMAGE_CLONER_METRICS_PORT": "9090"}, 9090, 4),
        ({"IMAGE_CLONER_METRICS_PORT": "65535"}, 65535, 4),
        ({"IMAGE_CLONER_MAX_CONCURRENT_TRANSFERS": "1"}, 8080, 1),
        ({"IMAGE_CLONER_MAX_CONCURRENT_TRANSFERS": " 16 "}, 8080, 16),
        ({"IMAGE_CLONER_MAX_CONCURRENT_TRANSFERS": "064"}, 8080, 64),
    ],
)
def test_numbers(env: dict[str, str], port: int, transfers: int) -> None:
    s = settings(**env)
    assert (s.metrics_port, s.registry_options.max_concurrent_transfers) == (port, transfers)


@pytest.mark.parametrize(
    ("name", "value", "top"),
    [
        ("IMAGE_CLONER_METRICS_PORT", "0", 65535),
        ("IMAGE_CLONER_METRICS_PORT", "65536", 65535),
        ("IMAGE_CLONER_METRICS_PORT", "http", 65535),
        ("IMAGE_CLONER_METRICS_PORT", "-1", 65535),
        ("IMAGE_CLONER_METRICS_PORT", "80.5", 65535),
        ("IMAGE_CLONER_METRICS_PORT", "\u0668\u0660", 65535),  # Arabic-Indic digits
        ("IMAGE_CLONER_METRICS_PORT", "9" * 5000, 65535),
        ("IMAGE_CLONER_MAX_CONCURRENT_TRANSFERS", "0", 64),
        ("IMAGE_CLONER_MAX_CONCURRENT_TRANSFERS", "65", 64),
    ],
)
def test_number_errors(name: str, value: str, top: int) -> None:
    message = config_error({**BASE, name: value})
    assert message.startswith(f"{name}: expected a whole number from 1 to {top}, got ")


@pytest.mark.parametrize(
    ("value", "expected"), [("text", "text"), ("json", "json"), ("JSON", "json")]
)
def test_log_format(value: str, expected: str) -> None:
    assert settings(IMAGE_CLONER_LOG_FORMAT=value).log_format == expected


def test_log_format_error() -> None:
    assert config_error({**BASE, "IMAGE_CLONER_LOG_FORMAT": "xml"}) == (
        "IMAGE_CLONER_LOG_FORMAT: expected text or json, got 'xml'"
    )


def test_registry_options_for_the_copy_command(ca_pem: Path) -> None:
    env = {**LOGIN, "IMAGE_CLONER_INSECURE_REGISTRIES": "a.local:1"}
    options = registry_options_from_env(
        env,
        backup_host="Dest.local:5000",
        extra_credentials={
            "quay.io": Credentials("src", "srcpass"),
            "dest.local:5000": Credentials("flag", "flagpass"),
        },
        extra_insecure_hosts=["B.local:2"],
        ca_file=ca_pem,
    )
    # --dest-creds beats IMAGE_CLONER_USER/PASS for the same host.
    assert dict(options.credentials) == {
        "dest.local:5000": Credentials("flag", "flagpass"),
        "quay.io": Credentials("src", "srcpass"),
    }
    assert options.insecure_hosts == {"a.local:1", "b.local:2"}
    assert options.ca_file == ca_pem


def test_registry_options_without_a_backup_host() -> None:
    assert dict(registry_options_from_env({}, backup_host=None).credentials) == {}
    with pytest.raises(
        ConfigError, match="IMAGE_CLONER_USER: set, but there is no backup registry"
    ):
        registry_options_from_env(LOGIN, backup_host=None)


def test_registry_options_flag_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^CA file: no such file: "):
        registry_options_from_env({}, backup_host=None, ca_file=tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match=r"^insecure registry: invalid registry host"):
        registry_options_from_env({}, backup_host=None, extra_insecure_hosts=["a b"])
    with pytest.raises(ConfigError, match=r"^credentials: invalid registry host"):
        registry_options_from_env(
            {}, backup_host=None, extra_credentials={"-bad": Credentials("u", "p")}
        )


def test_parse_credentials() -> None:
    assert parse_credentials("user:pa:ss", what="--src-creds") == Credentials("user", "pa:ss")
    for bad in (PASSWORD, f":{PASSWORD}", "user:"):
        with pytest.raises(ConfigError) as caught:
            parse_credentials(bad, what="--dest-creds")
        assert str(caught.value) == "--dest-creds: expected USERNAME:PASSWORD"


@pytest.mark.parametrize(
    ("value", "expected"), [("", "info"), ("debug", "debug"), ("WARNING", "warning")]
)
def test_log_level(value: str, expected: str) -> None:
    assert settings(IMAGE_CLONER_LOG_LEVEL=value).log_level == expected


def test_log_level_error() -> None:
    assert config_error({**BASE, "IMAGE_CLONER_LOG_LEVEL": "verbose"}) == (
        "IMAGE_CLONER_LOG_LEVEL: expected debug or info or warning or error, got 'verbose'"
    )


def test_owner_settings_defaults_and_values() -> None:
    s = settings()
    assert (s.exclude_images, s.rewrite_owned) == ((), False)
    s = settings(
        IMAGE_CLONER_EXCLUDE_IMAGES=" registry.corp.example/*, nginx ,",
        IMAGE_CLONER_REWRITE_OWNED="true",
    )
    assert [p.normalised for p in s.exclude_images] == [
        "registry.corp.example/*",
        "docker.io/library/nginx",
    ]
    assert s.rewrite_owned is True


# --- logins from files, and the pull-only login ------------------------------------

PULL_PASSWORD = "r3ad-0nly-Pa55"
PULL = {"IMAGE_CLONER_PULL_USER": "reader", "IMAGE_CLONER_PULL_PASS": PULL_PASSWORD}


def secret_file(tmp_path: Path, name: str, content: str) -> str:
    path = tmp_path / name
    path.write_text(content)
    return str(path)


def test_pull_login_is_its_own_and_the_push_login_stays_for_copies() -> None:
    s = settings(**LOGIN, **PULL)
    assert s.backup_credentials == Credentials("testuser", PASSWORD)
    assert s.pull_login is not None
    assert s.pull_login.first == Credentials("reader", PULL_PASSWORD)
    assert s.pull_secret_name == DEFAULT_PULL_SECRET
    assert s.pull_secret_uses_push_login is False
    assert PULL_PASSWORD not in repr(s)


def test_without_a_pull_login_the_push_login_is_handed_out() -> None:
    s = settings(**LOGIN)
    assert s.pull_login is None
    assert s.pull_secret_uses_push_login is True
    off = settings(**LOGIN, IMAGE_CLONER_MANAGE_PULL_SECRET="false")
    assert off.pull_secret_uses_push_login is False  # no pull Secrets at all


def test_a_pull_login_alone_still_names_the_pull_secret() -> None:
    # A backup that takes pushes without a login but wants one for pulls.
    s = settings(**PULL)
    assert s.backup_credentials is None
    assert s.pull_secret_name == DEFAULT_PULL_SECRET
    assert s.pull_secret_uses_push_login is False


def test_logins_from_files(tmp_path: Path) -> None:
    s = settings(
        IMAGE_CLONER_USER_FILE=secret_file(tmp_path, "user", "testuser\n"),
        IMAGE_CLONER_PASS_FILE=secret_file(tmp_path, "pass", f"{PASSWORD}\n"),
        IMAGE_CLONER_PULL_USER_FILE=secret_file(tmp_path, "pull-user", " reader "),
        IMAGE_CLONER_PULL_PASS_FILE=secret_file(tmp_path, "pull-pass", f" {PULL_PASSWORD}\r\n"),
    )
    assert s.backup_credentials == Credentials("testuser", PASSWORD)
    assert s.push_login is not None
    assert s.push_login.from_files
    assert s.pull_login is not None
    assert s.pull_login.first == Credentials("reader", f" {PULL_PASSWORD}")


def test_a_value_and_a_file_may_be_mixed(tmp_path: Path) -> None:
    s = settings(
        IMAGE_CLONER_USER="testuser",
        IMAGE_CLONER_PASS_FILE=secret_file(tmp_path, "pass", PASSWORD),
    )
    assert s.backup_credentials == Credentials("testuser", PASSWORD)


def test_registry_options_read_the_files_for_the_cli_too(tmp_path: Path) -> None:
    env = {
        "IMAGE_CLONER_USER_FILE": secret_file(tmp_path, "user", "testuser"),
        "IMAGE_CLONER_PASS_FILE": secret_file(tmp_path, "pass", PASSWORD),
    }
    options = registry_options_from_env(env, backup_host="backup.example")
    assert dict(options.credentials) == {"backup.example": Credentials("testuser", PASSWORD)}


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"IMAGE_CLONER_EXCLUDE_IMAGES": "nginx, nginx:1.21"},
            "IMAGE_CLONER_EXCLUDE_IMAGES: image pattern 'nginx:1.21' names a tag or digest",
        ),
        (
            {"IMAGE_CLONER_EXCLUDE_IMAGES": "Bad Pattern"},
            "IMAGE_CLONER_EXCLUDE_IMAGES: image pattern 'Bad Pattern' is not a repository",
        ),
        (
            {"IMAGE_CLONER_REWRITE_OWNED": "sometimes"},
            "IMAGE_CLONER_REWRITE_OWNED: expected true or false, got 'sometimes'",
        ),
    ],
)
def test_owner_setting_errors(env: dict[str, str], expected: str) -> None:
    assert config_error({**BASE, **env}).startswith(expected)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"IMAGE_CLONER_PULL_USER": "reader"},
            "IMAGE_CLONER_PULL_USER is set but IMAGE_CLONER_PULL_PASS is not: set both or neither",
        ),
        (
            {"IMAGE_CLONER_PULL_PASS": PULL_PASSWORD},
            "IMAGE_CLONER_PULL_PASS is set but IMAGE_CLONER_PULL_USER is not: set both or neither",
        ),
        (
            {"IMAGE_CLONER_PULL_USER": "reader", "IMAGE_CLONER_PULL_PASS": "\n"},
            "IMAGE_CLONER_PULL_USER is set but IMAGE_CLONER_PULL_PASS is not",
        ),
        (
            {"IMAGE_CLONER_PULL_PASS_FILE": "FILE"},
            "IMAGE_CLONER_PULL_PASS_FILE is set but IMAGE_CLONER_PULL_USER is not",
        ),
        (
            {"IMAGE_CLONER_USER_FILE": "FILE"},
            "IMAGE_CLONER_USER_FILE is set but IMAGE_CLONER_PASS is not",
        ),
        (
            {**LOGIN, "IMAGE_CLONER_PASS_FILE": "FILE"},
            "IMAGE_CLONER_PASS and IMAGE_CLONER_PASS_FILE are both set: use one of them",
        ),
        (
            {**LOGIN, "IMAGE_CLONER_USER_FILE": "FILE"},
            "IMAGE_CLONER_USER and IMAGE_CLONER_USER_FILE are both set: use one of them",
        ),
        (
            {**PULL, "IMAGE_CLONER_PULL_PASS_FILE": "FILE"},
            "IMAGE_CLONER_PULL_PASS and IMAGE_CLONER_PULL_PASS_FILE are both set",
        ),
        (
            {**PULL, "IMAGE_CLONER_PULL_USER_FILE": "FILE"},
            "IMAGE_CLONER_PULL_USER and IMAGE_CLONER_PULL_USER_FILE are both set",
        ),
    ],
)
def test_login_variable_errors(tmp_path: Path, env: dict[str, str], expected: str) -> None:
    path = secret_file(tmp_path, "secret", PASSWORD)
    env = {name: path if value == "FILE" else value for name, value in env.items()}
    message = config_error({**BASE, **env})
    assert message.startswith(expected), message
    assert PULL_PASSWORD not in message


@pytest.mark.parametrize(
    "variable",
    [
        "IMAGE_CLONER_USER_FILE",
        "IMAGE_CLONER_PASS_FILE",
        "IMAGE_CLONER_PULL_USER_FILE",
        "IMAGE_CLONER_PULL_PASS_FILE",
    ],
)
@pytest.mark.parametrize("problem", ["missing", "empty", "directory"])
def test_unreadable_or_empty_files_are_refused_naming_the_variable(
    tmp_path: Path, variable: str, problem: str
) -> None:
    pull = variable.startswith("IMAGE_CLONER_PULL_")
    good = {
        f"IMAGE_CLONER_{'PULL_' if pull else ''}USER_FILE": secret_file(tmp_path, "u", "robot"),
        f"IMAGE_CLONER_{'PULL_' if pull else ''}PASS_FILE": secret_file(tmp_path, "p", PASSWORD),
    }
    bad = tmp_path / "bad"
    if problem == "empty":
        bad.write_text("\n")
    elif problem == "directory":
        bad.mkdir()
    message = config_error({**BASE, **good, variable: str(bad)})
    assert message.startswith(f"{variable}: "), message
    assert str(bad) in message
    assert ("is empty" if problem == "empty" else "cannot read") in message


# --- leader election ------------------------------------------------------------------

ELECTION = {"IMAGE_CLONER_LEADER_ELECTION": "true", "IMAGE_CLONER_POD_NAMESPACE": "image-cloner"}


def test_leader_election_is_off_by_default_and_has_client_go_defaults_when_on() -> None:
    assert settings().leader_election is None
    election = settings(**ELECTION).leader_election
    assert election == LeaderElection(
        namespace="image-cloner",
        lease_name="image-cloner",
        lease_duration=15.0,
        renew_deadline=10.0,
        retry_period=2.0,
    )


def test_leader_election_timings_and_lease_name() -> None:
    election = settings(
        **ELECTION,
        IMAGE_CLONER_LEADER_ELECTION_LEASE="cloner-a",
        IMAGE_CLONER_LEADER_ELECTION_LEASE_DURATION="4s",
        IMAGE_CLONER_LEADER_ELECTION_RENEW_DEADLINE="3",
        IMAGE_CLONER_LEADER_ELECTION_RETRY_PERIOD="0.5s",
    ).leader_election
    assert election is not None
    assert (election.lease_name, election.lease_duration) == ("cloner-a", 4.0)
    assert (election.renew_deadline, election.retry_period) == (3.0, 0.5)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"IMAGE_CLONER_LEADER_ELECTION": "maybe"}, "expected true or false"),
        (
            {"IMAGE_CLONER_LEADER_ELECTION": "true"},
            "IMAGE_CLONER_LEADER_ELECTION: needs IMAGE_CLONER_POD_NAMESPACE",
        ),
        ({**ELECTION, "IMAGE_CLONER_LEADER_ELECTION_LEASE": "Bad_Name"}, "not a Lease name"),
        (
            {**ELECTION, "IMAGE_CLONER_LEADER_ELECTION_LEASE_DURATION": "10"},
            "LEASE_DURATION (10s) must be greater than IMAGE_CLONER_LEADER_ELECTION_RENEW_DEADLINE",
        ),
        (
            {**ELECTION, "IMAGE_CLONER_LEADER_ELECTION_RETRY_PERIOD": "9"},
            "RENEW_DEADLINE (10s) must be greater than IMAGE_CLONER_LEADER_ELECTION_RETRY_PERIOD"
            " x 1.2 (10.8s)",
        ),
        (
            {**ELECTION, "IMAGE_CLONER_LEADER_ELECTION_LEASE_DURATION": "15.5"},
            "the Lease holds whole seconds",
        ),
        ({**ELECTION, "IMAGE_CLONER_LEADER_ELECTION_RETRY_PERIOD": "0"}, "greater than 0"),
        ({**ELECTION, "IMAGE_CLONER_LEADER_ELECTION_RETRY_PERIOD": "2m"}, "e.g. 15 or 15s"),
        ({**ELECTION, "IMAGE_CLONER_LEADER_ELECTION_RETRY_PERIOD": "-1"}, "e.g. 15 or 15s"),
    ],
)
def test_leader_election_errors(env: dict[str, str], expected: str) -> None:
    assert expected in config_error({**BASE, **env})


def test_admission_mode_needs_a_serving_certificate(tmp_path: Path) -> None:
    defaults = settings()
    assert defaults.mode == "workload"
    assert defaults.rewrites_workloads
    assert not defaults.serves_webhook
    assert defaults.webhook_port == 8443
    wanted = {
        **BASE,
        "IMAGE_CLONER_MODE": "admission",
        "IMAGE_CLONER_WEBHOOK_CERT_DIR": str(tmp_path),
    }
    assert "no tls.crt in" in config_error(wanted)
    (tmp_path / "tls.crt").write_text("cert")
    (tmp_path / "tls.key").write_text("key")
    admission = Settings.from_env({**wanted, "IMAGE_CLONER_WEBHOOK_PORT": "9443"})
    assert admission.serves_webhook
    assert not admission.rewrites_workloads
    assert admission.webhook_port == 9443
    assert admission.webhook_cert_dir == tmp_path
    both = Settings.from_env({**wanted, "IMAGE_CLONER_MODE": "Both"})
    assert both.serves_webhook
    assert both.rewrites_workloads
    assert "IMAGE_CLONER_MODE: expected workload or admission or both" in config_error(
        {**BASE, "IMAGE_CLONER_MODE": "pods"}
    )


def test_rewrite_form_defaults_to_pinned_and_refuses_other_words() -> None:
    assert settings().rewrite_form == "pinned"
    assert settings(IMAGE_CLONER_REWRITE_FORM="TAG").rewrite_form == "tag"
    assert config_error({**BASE, "IMAGE_CLONER_REWRITE_FORM": "floating"}) == (
        "IMAGE_CLONER_REWRITE_FORM: expected pinned or tag, got 'floating'"
    )


def test_rollout_timeout_defaults_to_ten_minutes_and_reads_seconds() -> None:
    assert settings().rollout_timeout == 600.0
    assert settings(IMAGE_CLONER_ROLLOUT_TIMEOUT="90s").rollout_timeout == 90.0
    assert "IMAGE_CLONER_ROLLOUT_TIMEOUT: expected seconds greater than 0" in config_error(
        {**BASE, "IMAGE_CLONER_ROLLOUT_TIMEOUT": "10m"}
    )


def test_referrers_default_to_all_and_follow_the_setting_and_the_flag() -> None:
    assert registry_options_from_env({}, backup_host=None).referrers == ReferrersPolicy()
    env = {"IMAGE_CLONER_REFERRERS": "none"}
    assert not registry_options_from_env(env, backup_host=None).referrers.enabled
    flagged = registry_options_from_env(env, backup_host=None, referrers="all,optional")
    assert flagged.referrers == ReferrersPolicy(optional=True)


def test_referrers_errors_name_the_setting() -> None:
    with pytest.raises(ConfigError, match="IMAGE_CLONER_REFERRERS: expected all, none"):
        registry_options_from_env({"IMAGE_CLONER_REFERRERS": "some"}, backup_host=None)


def test_source_credentials_are_off_unless_asked(tmp_path: Path) -> None:
    plain = settings()
    assert (plain.read_pull_secrets, plain.source_auth_file, plain.credential_plugins) == (
        False,
        None,
        (),
    )
    auth = tmp_path / "auth.json"
    auth.write_text("{}")
    chosen = settings(
        IMAGE_CLONER_READ_PULL_SECRETS="true", IMAGE_CLONER_SOURCE_AUTH_FILE=str(auth)
    )
    assert chosen.read_pull_secrets
    assert chosen.source_auth_file == auth


def test_source_credential_files_are_checked_at_start(tmp_path: Path) -> None:
    missing = config_error({**BASE, "IMAGE_CLONER_SOURCE_AUTH_FILE": str(tmp_path / "nope")})
    assert missing.startswith("IMAGE_CLONER_SOURCE_AUTH_FILE:")
    config = tmp_path / "providers.yaml"
    config.write_text(
        "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\n"
        "providers:\n  - name: absent-plugin\n    matchImages: ['*.example.com']\n"
        "    defaultCacheDuration: 1h\n    apiVersion: credentialprovider.kubelet.k8s.io/v1\n"
    )
    error = config_error({**BASE, "IMAGE_CLONER_CREDENTIAL_PROVIDER_CONFIG": str(config)})
    assert error.startswith("IMAGE_CLONER_CREDENTIAL_PROVIDER_CONFIG:")
    assert "absent-plugin is not an executable file" in error


def test_the_backup_login_from_a_credential_provider(tmp_path: Path) -> None:
    write_plugin(tmp_path)
    config = write_config(
        tmp_path / "providers.yaml", match_images=["localhost:5000", "*.example.com"], env={}
    )
    plugin = {
        "IMAGE_CLONER_CREDENTIAL_PROVIDER_CONFIG": str(config),
        "IMAGE_CLONER_BACKUP_CREDENTIAL_PROVIDER": "test-credential-provider",
    }
    chosen = settings(**plugin)
    assert chosen.backup_login_plugin is not None
    assert chosen.backup_login_plugin.name == "test-credential-provider"
    # Its tokens are never handed out: no pull Secret without a pull login...
    assert (chosen.push_login, chosen.pull_secret_name) == (None, None)
    assert not chosen.pull_secret_uses_push_login
    # ...and with one, the pull Secret holds that.
    pull = settings(**plugin, IMAGE_CLONER_PULL_USER="reader", IMAGE_CLONER_PULL_PASS="r")
    assert pull.pull_secret_name == DEFAULT_PULL_SECRET
    assert not pull.pull_secret_uses_push_login


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            LOGIN,
            "IMAGE_CLONER_BACKUP_CREDENTIAL_PROVIDER and IMAGE_CLONER_USER/IMAGE_CLONER_PASS"
            " are both set",
        ),
        (
            {"IMAGE_CLONER_BACKUP_CREDENTIAL_PROVIDER": "ecr-credential-provider"},
            "no provider 'ecr-credential-provider' (configured: test-credential-provider)",
        ),
        (
            {"IMAGE_CLONER_REGISTRY": "backup.corp.test"},
            "provider 'test-credential-provider' does not match the backup registry"
            " backup.corp.test",
        ),
    ],
)
def test_backup_credential_provider_errors(
    tmp_path: Path, extra: dict[str, str], expected: str
) -> None:
    write_plugin(tmp_path)
    config = write_config(tmp_path / "providers.yaml", match_images=["localhost:5000"], env={})
    env = {
        **BASE,
        "IMAGE_CLONER_CREDENTIAL_PROVIDER_CONFIG": str(config),
        "IMAGE_CLONER_BACKUP_CREDENTIAL_PROVIDER": "test-credential-provider",
        **extra,
    }
    assert expected in config_error(env)


def test_a_backup_credential_provider_needs_the_provider_config() -> None:
    error = config_error({**BASE, "IMAGE_CLONER_BACKUP_CREDENTIAL_PROVIDER": "ecr"})
    assert error == (
        "IMAGE_CLONER_BACKUP_CREDENTIAL_PROVIDER: no provider 'ecr'"
        " (configured: none: IMAGE_CLONER_CREDENTIAL_PROVIDER_CONFIG unset)"
    )
