"""The OCI registry side of image-cloner: references, the registry client and the copy engine.

Knows nothing of Kubernetes. Most callers need only `Copier` and the error tree.
"""

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
