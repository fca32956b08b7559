"""`ImageCopies`: a verified pinned copy is not asked of the backup again; background copies.

The fake copier records every copy it is asked for: a request to the backup registry in
the real one (at least a HEAD). A fake clock moves time past `VERIFIED_FOR`.
"""

from __future__ import annotations

import asyncio

import pytest

from image_cloner.controller.copies import VERIFIED_FOR, ImageCopies
from image_cloner.health import Health
from image_cloner.metrics import Metrics
from image_cloner.oci.copying import CopyResult, TagOutcome
from image_cloner.oci.errors import NotFoundError
from image_cloner.oci.references import parse_reference
from tests.support.clock import Clock
from tests.support.fake_copier import FakeCopier, pinned

BACKUP = "backup.example:5000"


@pytest.fixture
def copier() -> FakeCopier:
    return FakeCopier()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def copies(copier: FakeCopier, clock: Clock) -> ImageCopies:
    return ImageCopies(copier, metrics=Metrics(health=Health()), clock=clock)


def refs(image: str) -> tuple[str, str]:
    return pinned(image), f"{BACKUP}/{pinned(image)}"


async def copy(copies: ImageCopies, image: str) -> CopyResult:
    source, target = refs(image)
    return await copies.copy(parse_reference(source), parse_reference(target))


async def test_a_verified_pinned_copy_is_not_asked_again_and_reads_as_present(
    copies: ImageCopies, copier: FakeCopier
) -> None:
    first = await copy(copies, "nginx:1")
    second = await copy(copies, "nginx:1")

    assert copier.copied == [refs("nginx:1")], "one copy for both workloads"
    assert (first.already_present, first.tag) == (False, TagOutcome.PUSHED)
    assert (second.already_present, second.tag) == (True, TagOutcome.ALREADY)
    assert second.pinned == first.pinned


async def test_a_verified_copy_is_asked_again_after_its_period(
    copies: ImageCopies, copier: FakeCopier, clock: Clock
) -> None:
    await copy(copies, "nginx:1")
    clock.now += VERIFIED_FOR
    await copy(copies, "nginx:1")
    assert copier.copied == [refs("nginx:1")] * 2


async def test_a_copy_by_tag_is_never_remembered(copies: ImageCopies, copier: FakeCopier) -> None:
    # A tag may name other bits the next time: only a digest is content-addressed.
    source, target = parse_reference("nginx:1"), parse_reference(f"{BACKUP}/nginx:1")
    await copies.copy(source, target)
    await copies.copy(source, target)
    assert len(copier.copied) == 2


async def test_a_failed_copy_is_not_remembered(copies: ImageCopies, copier: FakeCopier) -> None:
    copier.failing["nginx:1"] = NotFoundError("manifest unknown")
    with pytest.raises(NotFoundError):
        await copy(copies, "nginx:1")
    assert copies.verified(*map(parse_reference, refs("nginx:1"))) is None


async def test_start_shares_one_background_copy_and_stop_cancels_it(
    copies: ImageCopies, copier: FakeCopier
) -> None:
    copier.gate = asyncio.Event()
    source, target = map(parse_reference, refs("nginx:1"))
    first, second = copies.start(source, target), copies.start(source, target)
    assert isinstance(first, asyncio.Task)
    assert first is second, "workloads waiting for one image wait for one task"

    await copies.stop()
    assert first.cancelled()
    assert copier.copied == []


async def test_start_hands_out_a_verified_copy_at_once(
    copies: ImageCopies, copier: FakeCopier
) -> None:
    source, target = map(parse_reference, refs("nginx:1"))
    task = copies.start(source, target)
    assert isinstance(task, asyncio.Task)
    await task
    again = copies.start(source, target)
    assert isinstance(again, CopyResult)
    assert again.already_present
    assert copier.copied == [refs("nginx:1")]
