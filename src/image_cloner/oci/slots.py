"""Transfer slots: how many blob transfers may run against one registry host at a time.

A blob transfer reads from one host and writes to another, so it holds a slot on both.
Slots are taken in sorted host order: two transfers between the same pair of hosts in
opposite directions then never each hold one slot and wait for the other's. This is the
copy engine's scheduling, not part of talking HTTP, so it lives apart from the transport.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

__all__ = ["TransferSlots"]


class TransferSlots:
    """`per_host` slots for each registry host, created as hosts are first seen."""

    def __init__(self, per_host: int) -> None:
        self.per_host = per_host
        self._slots: dict[str, asyncio.Semaphore] = {}

    @asynccontextmanager
    async def hold(self, *authorities: str) -> AsyncIterator[None]:
        """Hold one slot on each host (sorted, so two transfers never deadlock)."""
        async with AsyncExitStack() as stack:
            for authority in sorted(set(authorities)):
                slot = self._slots.get(authority)
                if slot is None:
                    slot = asyncio.Semaphore(self.per_host)
                    self._slots[authority] = slot
                await stack.enter_async_context(slot)
            yield
