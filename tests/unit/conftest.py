"""Fixtures shared by the unit tests: log output captured through our own handler."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from image_cloner.logs import configure_logging


@pytest.fixture
def root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
def capture(root_logging: None) -> Callable[..., io.StringIO]:
    def configure(**kwargs: Any) -> io.StringIO:
        stream = io.StringIO()
        configure_logging(stream=stream, level=logging.DEBUG, **kwargs)
        return stream

    return configure
