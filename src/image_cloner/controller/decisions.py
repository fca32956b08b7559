"""The controller's decision vocabulary: one log line per decision about a workload.

The words are the seed project's ("inspecting deployment", "cloning deployment image",
"deployment image reference updated"), so people and scripts that read its logs keep
working; the workload's kind supplies the noun. How lines are formatted and redacted is
`image_cloner.logs`' job; what the controller says, and at which level, is this one's.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from image_cloner.logs import CONTROLLER_LOGGER, log_event

__all__ = ["WorkloadLog"]


class WorkloadLog:
    """The seed's decision lines about one workload, named by its kind's noun.

    One call per decision; extra keyword fields (e.g. `container="web"`) follow the seed's.
    Per-event lines are DEBUG, lines about changes INFO, failures WARNING.
    """

    def __init__(
        self,
        noun: str,
        *,
        name: str,
        namespace: str,
        logger: logging.Logger | None = None,
    ) -> None:
        self.noun = noun
        self._where: dict[str, object] = {"name": name, "namespace": namespace}
        self._logger = logger or logging.getLogger(CONTROLLER_LOGGER)

    def _log(self, level: int, msg: str, fields: Mapping[str, object]) -> None:
        # stacklevel 3: the record names whoever called the decision method.
        where: dict[str, object] = {**self._where, **fields}
        log_event(self._logger, level, msg, exc_info=None, stacklevel=3, **where)

    def skipped(self, reason: str, **fields: object) -> None:
        self._log(logging.DEBUG, f"{self.noun} skipped", {"reason": reason, **fields})

    def rewrite_reverted(self, manager: str | None, **fields: object) -> None:
        self._log(
            logging.WARNING,
            f"{self.noun} rewrite reverted",
            {"manager": manager or "unknown", **fields},
        )

    def excluded(self, image: str, pattern: str, **fields: object) -> None:
        self._log(logging.DEBUG, "image excluded", {"image": image, "pattern": pattern, **fields})

    def inspecting(self, **fields: object) -> None:
        self._log(logging.DEBUG, f"inspecting {self.noun}", fields)

    def not_ready(self, reason: str, **fields: object) -> None:
        self._log(logging.DEBUG, f"{self.noun} not ready", {"reason": reason, **fields})

    def checking_container(self, image: str, **fields: object) -> None:
        self._log(logging.DEBUG, f"checking {self.noun} container", {"image": image, **fields})

    def already_cloned(self, image: str, **fields: object) -> None:
        self._log(logging.DEBUG, "image already cloned", {"image": image, **fields})

    def cloning(self, image: str, **fields: object) -> None:
        self._log(logging.INFO, f"cloning {self.noun} image", {"image": image, **fields})

    def clone_failed(self, image: str, reason: str, **fields: object) -> None:
        self._log(
            logging.WARNING,
            f"cloning {self.noun} image failed",
            {"image": image, "reason": reason, **fields},
        )

    def updating(self, from_image: str, to_image: str, **fields: object) -> None:
        self._log(
            logging.INFO,
            f"updating {self.noun} image",
            {"From": from_image, "To": to_image, **fields},
        )

    def updated(self, image: str, **fields: object) -> None:
        self._log(logging.INFO, f"{self.noun} image reference updated", {"image": image, **fields})

    def not_rewritten(self, reason: str, **fields: object) -> None:
        self._log(
            logging.INFO,
            f"{self.noun} images backed up, not rewritten",
            {"reason": reason, **fields},
        )
