"""The test PKI's certificates pass strict X.509 verification, as real CAs' do.

Python 3.13's `ssl.create_default_context()` sets `VERIFY_X509_STRICT`, which refuses a leaf
without an Authority Key Identifier (RFC 5280 4.2.1.1): the suite must not fail on that
Python for a flaw of its own certificates rather than of the code under test.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.pki import make_pki


def _handshake(client: ssl.SSLObject, server: ssl.SSLObject, wires: _Wires) -> None:
    """Drive a TLS handshake between two in-memory ends, carrying each one's bytes over."""
    pending = [client, server]
    for _ in range(10):
        for end in list(pending):
            try:
                end.do_handshake()
                pending.remove(end)
            except ssl.SSLWantReadError:
                pass
        wires.server_in.write(wires.client_out.read())
        wires.client_in.write(wires.server_out.read())
        if not pending:
            return
    raise AssertionError("the handshake did not finish")


@dataclass(frozen=True)
class _Wires:
    client_in: ssl.MemoryBIO = field(default_factory=ssl.MemoryBIO)
    client_out: ssl.MemoryBIO = field(default_factory=ssl.MemoryBIO)
    server_in: ssl.MemoryBIO = field(default_factory=ssl.MemoryBIO)
    server_out: ssl.MemoryBIO = field(default_factory=ssl.MemoryBIO)


def test_server_certificate_verifies_with_strict_x509_checks(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    client_context = ssl.create_default_context(cafile=str(pki.ca_cert))
    client_context.verify_flags |= ssl.VERIFY_X509_STRICT
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(pki.server_cert, pki.server_key)
    wires = _Wires()
    client = client_context.wrap_bio(wires.client_in, wires.client_out, server_hostname="127.0.0.1")
    server = server_context.wrap_bio(wires.server_in, wires.server_out, server_side=True)

    _handshake(client, server, wires)

    assert client.getpeercert() is not None
