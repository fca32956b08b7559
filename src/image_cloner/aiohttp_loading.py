"""aiohttp, imported without the two SSL contexts it builds and we never use.

`aiohttp.connector` builds a verified and an unverified `SSLContext` when it is imported,
and each loads the system trust store: 2 x ~38 ms of CPU on this machine, a tenth of the
whole `copy` of a 110 MB image (docs/benchmarks.md). They are only its defaults: every
request we send names its own context (`oci.transport`; `controller.kube` and kopf build
theirs from the kubeconfig), so `import_aiohttp` imports aiohttp with the store's loading
skipped. Its two defaults then trust no certificate at all: anything that fell back on
them would fail verification, never pass without it.

Only `copy` calls it (`cli`), where start-up is a user's first impression; the controller
pays the 76 ms once at start. Nothing to do when aiohttp is already imported.
"""

from __future__ import annotations

import ssl
import sys

__all__ = ["import_aiohttp"]


def import_aiohttp() -> None:
    """Import aiohttp (if it is not yet) while `SSLContext.set_default_verify_paths` does
    nothing. Single-threaded start-up only: the switch is process-wide while it lasts."""
    if "aiohttp" in sys.modules:
        return
    own = ssl.SSLContext.__dict__.get("set_default_verify_paths")
    ssl.SSLContext.set_default_verify_paths = _load_nothing  # type: ignore[method-assign]
    try:
        import aiohttp  # noqa: F401
    finally:
        if own is None:
            del ssl.SSLContext.set_default_verify_paths
        else:
            ssl.SSLContext.set_default_verify_paths = own  # type: ignore[method-assign]


def _load_nothing(self: ssl.SSLContext) -> None:
    return None
