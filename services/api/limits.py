"""Token buckets, one per key (a token's id, a client's address): `rate` a second, up to `burst`."""

from __future__ import annotations

import time
from collections import OrderedDict

MAX_KEYS = 10_000


class Buckets:
    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self._levels: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _level(self, key: str, now: float) -> float:
        level, at = self._levels.get(key, (self.burst, now))
        return min(self.burst, level + (now - at) * self.rate)

    def has(self, key: str, now: float | None = None) -> bool:
        """Whether `key` could take one now (without taking it)."""
        return self._level(key, time.monotonic() if now is None else now) >= 1.0

    def take(self, key: str, now: float | None = None) -> bool:
        """Take one for `key`; False when its bucket is empty."""
        now = time.monotonic() if now is None else now
        level = self._level(key, now)
        ok = level >= 1.0
        self._levels[key] = (level - 1.0 if ok else level, now)
        self._levels.move_to_end(key)
        while len(self._levels) > MAX_KEYS:  # bounded: the longest idle keys are full again anyway
            self._levels.popitem(last=False)
        return ok
