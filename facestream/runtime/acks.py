"""Acknowledging records in the order they arrived, whatever order their work finishes in.

A stage whose records are independent (the detector: one slow image source must not hold the
others) works on many records at once, and they finish out of order. faust commits, per
partition, up to the first run of acknowledged offsets; it assumes they start where the last
commit ended. So records are acknowledged here only as a prefix of each partition's arrivals:
a record still in work holds its partition's commit position (a restart redelivers from it, and
deterministic ids make the repeats harmless), never the work on the records behind it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(eq=False)
class Ticket:
    """One tracked record: `event` is acknowledged once it and everything before it is done."""

    event: Any
    partition: Hashable
    done: bool = False


class InOrderAcks:
    def __init__(self, ack: Callable[[Any], Awaitable[Any]], partition_of: Callable[[Any], Hashable]) -> None:
        self._ack = ack
        self._partition_of = partition_of
        self._queues: dict[Hashable, deque[Ticket]] = {}  # one per partition ever seen: few, kept

    def track(self, events: Sequence[Any]) -> list[Ticket]:
        """Register `events` in arrival order; returns their tickets, for `done`."""
        tickets = []
        for event in events:
            ticket = Ticket(event, self._partition_of(event))
            self._queues.setdefault(ticket.partition, deque()).append(ticket)
            tickets.append(ticket)
        return tickets

    async def done(self, tickets: Sequence[Ticket]) -> int:
        """Mark `tickets` done and acknowledge every partition's done prefix; returns how many
        records were acknowledged now."""
        for ticket in tickets:
            ticket.done = True
        acked = 0
        for partition in {t.partition for t in tickets}:
            queue = self._queues.get(partition)
            while queue and queue[0].done:
                ticket = queue.popleft()  # before the await: a concurrent call sees the next one
                await self._ack(ticket.event)
                acked += 1
        return acked

    @property
    def waiting(self) -> int:
        """Records tracked and not yet acknowledged (in work, or done behind one in work)."""
        return sum(len(q) for q in self._queues.values())
