"""In-order acknowledgement (facestream.runtime.acks): records finish in any order, and each
partition is acknowledged only as far as every record before is done."""

from __future__ import annotations

from facestream.runtime.acks import InOrderAcks


async def test_a_record_in_work_holds_only_its_partitions_acks() -> None:
    acked: list[tuple[int, int]] = []

    async def ack(event: tuple[int, int]) -> None:
        acked.append(event)

    acks = InOrderAcks(ack, lambda event: event[0])  # events are (partition, offset)
    tickets = acks.track([(0, 10), (0, 11), (1, 5), (0, 12), (1, 6)])
    first, second, other, third, other_next = tickets

    assert await acks.done([second, third]) == 0  # (0, 10) is still in work
    assert acked == []
    assert await acks.done([other_next]) == 0  # (1, 5) is still in work
    assert await acks.done([other]) == 2  # partition 1 is free of partition 0's slow record
    assert acked == [(1, 5), (1, 6)]
    assert acks.waiting == 3
    assert await acks.done([first]) == 3  # now the whole prefix of partition 0, in order
    assert acked[2:] == [(0, 10), (0, 11), (0, 12)]
    assert acks.waiting == 0
    later = acks.track([(0, 13)])
    assert await acks.done(later) == 1
