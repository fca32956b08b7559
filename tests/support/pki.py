"""Throw-away certificate authorities for the test registries, token issuer, proxies and test bed.

Real TLS is part of what the copy engine must get right (custom CA bundle, no fallback to plain
HTTP), and the Kubernetes test bed needs a CA for the apiserver and its client certificates, so
certificates come from a CA made here instead of disabling verification. Keys are EC P-256:
generating them takes milliseconds, which keeps start-up fast. Private keys are written 0600.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CertificateAuthority",
    "ControlPlanePKI",
    "TestPKI",
    "make_cert_dir",
    "make_control_plane_pki",
    "make_pki",
    "write_key_pair",
]

VALIDITY = datetime.timedelta(days=7)
# Backdated so that a clock a little behind ours still accepts the certificates.
BACKDATE = datetime.timedelta(hours=1)
SERVER_NAMES = ("localhost",)
SERVER_IPS = ("127.0.0.1", "::1")
CONTROL_PLANE_VALIDITY = datetime.timedelta(days=30)


class CertificateAuthority:
    """A self-signed CA whose certificate and key are written when it is made; issues leaves.

    Every certificate is valid from an hour ago for `validity`, carries a subject key identifier,
    basic constraints and key usage (all critical but the identifier), and is signed with SHA-256.
    """

    def __init__(
        self,
        cert_file: Path,
        key_file: Path,
        *,
        common_name: str,
        validity: datetime.timedelta = VALIDITY,
    ) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.validity = validity
        self._key = _new_key(key_file)
        self._name = _name(common_name)
        self.certificate = self._sign(
            self._name, self._key.public_key(), x509.BasicConstraints(ca=True, path_length=0)
        )
        _write_cert(cert_file, self.certificate)

    def issue_server(
        self, cert_file: Path, key_file: Path, *, common_name: str, names: Sequence[str]
    ) -> None:
        """A serving certificate (EKU serverAuth) for `names`: DNS names and IP addresses."""
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names if not _is_ip(n)]
        sans += [x509.IPAddress(ipaddress.ip_address(n)) for n in names if _is_ip(n)]
        server_auth = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
        self.issue(
            cert_file,
            key_file,
            common_name=common_name,
            extensions=(server_auth, x509.SubjectAlternativeName(sans)),
        )

    def issue_client(
        self, cert_file: Path, key_file: Path, *, common_name: str, organization: str | None = None
    ) -> None:
        """A client certificate (EKU clientAuth); Kubernetes reads `organization` as a group."""
        client_auth = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
        self.issue(
            cert_file,
            key_file,
            common_name=common_name,
            organization=organization,
            extensions=(client_auth,),
        )

    def issue(
        self,
        cert_file: Path,
        key_file: Path,
        *,
        common_name: str,
        organization: str | None = None,
        extensions: Sequence[x509.ExtensionType] = (),
    ) -> None:
        """A leaf certificate with a new key; `extensions` are added as non-critical."""
        key = _new_key(key_file)
        leaf = x509.BasicConstraints(ca=False, path_length=None)
        subject = _name(common_name, organization=organization)
        _write_cert(cert_file, self._sign(subject, key.public_key(), leaf, *extensions))

    def _sign(
        self,
        subject: x509.Name,
        public_key: ec.EllipticCurvePublicKey,
        constraints: x509.BasicConstraints,
        *extensions: x509.ExtensionType,
    ) -> x509.Certificate:
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + self.validity)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(constraints, critical=True)
            .add_extension(_key_usage(ca=constraints.ca), critical=True)
        )
        if not constraints.ca:
            # RFC 5280 4.2.1.1: every certificate but a self-signed CA names its issuer's key;
            # Python 3.13's default verification (VERIFY_X509_STRICT) refuses one without.
            issuer_key = x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key())
            builder = builder.add_extension(issuer_key, critical=False)
        for extension in extensions:
            builder = builder.add_extension(extension, critical=False)
        return builder.sign(self._key, hashes.SHA256())


@dataclass(frozen=True)
class TestPKI:
    """Paths of the PEM files written by `make_pki`."""

    __test__ = False  # not a pytest test class, despite the name

    directory: Path
    ca_cert: Path
    """The CA certificate: what clients trust (`--*-cert-dir`, `IMAGE_CLONER_CA_FILE`)."""
    ca_key: Path
    server_cert: Path
    """Server certificate for 127.0.0.1, ::1 and localhost, signed by the CA."""
    server_key: Path
    signing_cert: Path
    """Token-signing certificate (signed by the CA) for the JWT `x5c` header of test tokens."""
    signing_key: Path


def make_pki(directory: Path) -> TestPKI:
    """Write a CA, a server certificate and a token-signing certificate into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    pki = TestPKI(
        directory=directory,
        ca_cert=directory / "ca.crt",
        ca_key=directory / "ca.key",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        signing_cert=directory / "signing.crt",
        signing_key=directory / "signing.key",
    )
    ca = CertificateAuthority(pki.ca_cert, pki.ca_key, common_name="image-cloner test CA")
    ca.issue_server(
        pki.server_cert,
        pki.server_key,
        common_name="127.0.0.1",
        names=(*SERVER_NAMES, *SERVER_IPS),
    )
    # A plain leaf: the registry only checks that the token's `x5c` chains to this CA.
    ca.issue(pki.signing_cert, pki.signing_key, common_name="image-cloner test token signer")
    return pki


@dataclass(frozen=True)
class ControlPlanePKI:
    """Paths of the PEM files `make_control_plane_pki` writes for the Kubernetes test bed."""

    ca_cert: Path
    """Signed the apiserver's serving certificate and the client certificates."""
    ca_key: Path
    apiserver_cert: Path
    """Serving certificate for localhost, kubernetes.default.svc, 127.0.0.1 and ::1."""
    apiserver_key: Path
    admin_cert: Path
    """Client certificate of `testbed-admin` in group system:masters (RBAC lets it do anything)."""
    admin_key: Path
    sa_key: Path
    """The controller-manager signs ServiceAccount tokens with this key."""
    sa_pub: Path
    """The same key's public half: the apiserver only reads EC keys as public keys."""

    @classmethod
    def at(cls, directory: Path) -> ControlPlanePKI:
        """The paths in `directory` (whether or not the files exist yet)."""
        return cls(
            *(directory / name for name in ("ca.crt", "ca.key", "apiserver.crt", "apiserver.key")),
            *(directory / name for name in ("admin.crt", "admin.key", "sa.key", "sa.pub")),
        )


def make_control_plane_pki(
    directory: Path, *, validity: datetime.timedelta = CONTROL_PLANE_VALIDITY
) -> ControlPlanePKI:
    """Write the test bed's CA, apiserver and admin certificates and ServiceAccount key pair."""
    directory.mkdir(parents=True, exist_ok=True)
    pki = ControlPlanePKI.at(directory)
    ca = CertificateAuthority(
        pki.ca_cert, pki.ca_key, common_name="image-cloner testbed CA", validity=validity
    )
    ca.issue_server(
        pki.apiserver_cert,
        pki.apiserver_key,
        common_name="kube-apiserver",
        names=("localhost", "kubernetes.default.svc", "127.0.0.1", "::1"),
    )
    ca.issue_client(
        pki.admin_cert, pki.admin_key, common_name="testbed-admin", organization="system:masters"
    )
    write_key_pair(pki.sa_key, pki.sa_pub)
    return pki


def make_cert_dir(directory: Path, ca_file: Path) -> Path:
    """Make a directory in the layout skopeo's `--cert-dir` expects: the CA as `ca.crt`."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ca_file, directory / "ca.crt")
    return directory


def write_key_pair(private_file: Path, public_file: Path) -> None:
    """A bare EC key pair (no certificate), e.g. for signing ServiceAccount tokens."""
    public = _new_key(private_file).public_key()
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    public_file.write_bytes(pem)


def _name(common_name: str, *, organization: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attrs)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _new_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # 0600 before the key is in it (chmod too: touch keeps the mode of an existing file).
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_bytes(pem)
    return key


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
