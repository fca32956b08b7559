"""Kubernetes API errors that keep the apiserver's `Status`, like kopf's `clients/errors.py`.

A failed request answers with a `Status` object: the HTTP code, a machine-readable
`reason` ("Conflict", "Invalid", "NotFound", "Forbidden", "AlreadyExists", ...), a
message, and `details` (the object's kind and name, and a list of `causes`). Decisions
read the reason and the details, not the status code alone: a JSON patch whose `test`
failed and an admission policy's refusal are both 422 "Invalid", yet one means "read
again and decide again" and the other "report it, re-reading will not help".

What the apiserver (v1.37) answers, checked on the test bed (tests/e2e/test_kube.py)
and pinned in tests/unit/test_kube_errors.py:

- a failed JSON-patch `test` (the object changed since we read it): 422, "Invalid",
  the generic message "the server rejected our request due to an error in our request"
  (the failed test is not named), details that name no object and carry no causes (the
  patch handler reports the patch document failing to apply, before it has an object);
- a ValidatingAdmissionPolicy refusal: 422, "Invalid" (the policy's reason, Invalid by
  default), details naming the object (kind "deployments", its name) with one cause
  holding the policy's message; field validation errors name the object too;
- a write carrying a stale resourceVersion: 409, "Conflict", details naming the object.

`KubeApiError.status` is 0 when no answer came at all (refused, reset, timed out).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "AlreadyExists",
    "Conflict",
    "Forbidden",
    "Invalid",
    "KubeApiError",
    "NotFound",
    "StatusCause",
    "Unreachable",
    "api_error",
    "changed_meanwhile",
]


@dataclass(frozen=True)
class StatusCause:
    """One entry of `Status.details.causes`: what is wrong, and where."""

    message: str
    reason: str = ""
    """Machine-readable ("FieldValueInvalid"); often empty."""
    field: str = ""
    """The field at fault ("spec.template.spec.containers[0].image"); often empty."""


class KubeApiError(Exception):
    """An API request failed; the text is the apiserver's, never a request body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        reason: str = "",
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(f"Kubernetes API error {status}: {message}")
        self.status = status
        """HTTP status code; 0 when the apiserver did not answer."""
        self.reason = reason
        """`Status.reason`: "Conflict", "Invalid", "NotFound", ... ("" when none came)."""
        self.message = message
        self.details: Mapping[str, Any] = dict(details or {})
        """`Status.details`: "group", "kind", "name", "causes" (any may be absent)."""

    @property
    def causes(self) -> tuple[StatusCause, ...]:
        raw = self.details.get("causes")
        if not isinstance(raw, list):
            return ()
        return tuple(
            StatusCause(
                message=str(c.get("message") or ""),
                reason=str(c.get("reason") or ""),
                field=str(c.get("field") or ""),
            )
            for c in raw
            if isinstance(c, Mapping)
        )

    @property
    def names_object(self) -> bool:
        """The Status names the object it is about (validation, admission, conflicts do)."""
        return bool(self.details.get("name") or self.details.get("kind"))


class Unreachable(KubeApiError):
    """No answer: connection refused or reset, TLS trouble, or no response in time."""


class NotFound(KubeApiError):
    """404 "NotFound": the object (or its namespace) does not exist."""


class Conflict(KubeApiError):
    """409 "Conflict": the write carried a resourceVersion that is no longer current."""


class AlreadyExists(KubeApiError):
    """409 "AlreadyExists": a create found an object of that name."""


class Forbidden(KubeApiError):
    """403 "Forbidden": RBAC (or a webhook answering Forbidden) refused the request."""


class Invalid(KubeApiError):
    """422 "Invalid": the request cannot be applied to the object, or the result is refused."""

    @property
    def patch_did_not_apply(self) -> bool:
        """The JSON patch itself failed (a `test` op, a missing path): the object changed.

        The apiserver reports this before it builds the new object, so its Status names no
        object and has no causes; a refusal of the patched object (field validation, an
        admission policy) always names the object.
        """
        return not self.names_object and not self.causes


def changed_meanwhile(error: KubeApiError) -> bool:
    """A write guarded by what we read failed because the object is no longer that one."""
    if isinstance(error, Conflict):
        return True
    return isinstance(error, Invalid) and error.patch_did_not_apply


_BY_REASON: Mapping[str, type[KubeApiError]] = {
    "NotFound": NotFound,
    "Conflict": Conflict,
    "AlreadyExists": AlreadyExists,
    "Forbidden": Forbidden,
    "Invalid": Invalid,
}
_BY_STATUS: Mapping[int, type[KubeApiError]] = {
    # Only for answers without a Status (a proxy in between): the code's usual reason.
    404: NotFound,
    409: Conflict,
    403: Forbidden,
    422: Invalid,
}


def api_error(status: int, body: object, *, fallback: str) -> KubeApiError:
    """The error for an answer with HTTP `status` and `body` (a `Status`, if JSON).

    `fallback` is the message when the body says nothing (the HTTP reason phrase).
    """
    parsed = _status_of(body)
    message = str(parsed.get("message") or fallback or "no response")
    reason = str(parsed.get("reason") or "")
    details = parsed.get("details")
    if reason:
        error_type = _BY_REASON.get(reason, KubeApiError)
    else:
        error_type = _BY_STATUS.get(status, KubeApiError)
    return error_type(
        status,
        message,
        reason=reason,
        details=details if isinstance(details, Mapping) else None,
    )


def _status_of(body: object) -> Mapping[str, Any]:
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if not isinstance(body, str):
        return {}
    try:
        parsed = json.loads(body)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, Mapping) and parsed.get("kind") == "Status" else {}
