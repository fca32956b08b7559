"""The OCI registry side of image-cloner: references, the registry client and the copy engine.

Knows nothing of Kubernetes. Most callers need only `Copier` and the error tree.

The names below are imported on first use (PEP 562), not with the package: importing
`image_cloner.oci.references` or `.options` (pure, stdlib-only) must not pull in aiohttp,
which costs about 0.4 s of every `image-cloner --help` (see docs/benchmarks.md).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from image_cloner.oci.copying import (
        BlobOutcome,
        Copier,
        CopyResult,
        ProgressListener,
        TagOutcome,
    )
    from image_cloner.oci.errors import (
        AuthenticationError,
        DigestMismatchError,
        InvalidManifestError,
        NotFoundError,
        RegistryError,
        RegistryUnavailableError,
        UnsupportedMediaTypeError,
    )
    from image_cloner.oci.options import Credentials, RegistryOptions
    from image_cloner.oci.retries import RetryPolicy

_HOMES = {
    "image_cloner.oci.copying": (
        "BlobOutcome",
        "Copier",
        "CopyResult",
        "ProgressListener",
        "TagOutcome",
    ),
    "image_cloner.oci.errors": (
        "AuthenticationError",
        "DigestMismatchError",
        "InvalidManifestError",
        "NotFoundError",
        "RegistryError",
        "RegistryUnavailableError",
        "UnsupportedMediaTypeError",
    ),
    "image_cloner.oci.options": ("Credentials", "RegistryOptions"),
    "image_cloner.oci.retries": ("RetryPolicy",),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [
    "AuthenticationError",
    "BlobOutcome",
    "Copier",
    "CopyResult",
    "Credentials",
    "DigestMismatchError",
    "InvalidManifestError",
    "NotFoundError",
    "ProgressListener",
    "RegistryError",
    "RegistryOptions",
    "RegistryUnavailableError",
    "RetryPolicy",
    "TagOutcome",
    "UnsupportedMediaTypeError",
]


def __getattr__(name: str) -> Any:
    module = _HOME_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once found, an ordinary attribute
    return value
