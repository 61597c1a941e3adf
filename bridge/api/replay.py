"""The command ids the bridge has seen inside the freshness window, to refuse a command sent twice (`replayed`).

A signed command is fresh for ``clock_skew`` seconds either side of the bridge's clock, so an id must be
remembered for twice that.  Every command other than ``payment.start``/``payment.refund`` is recorded, so a
busy or misbehaving client fills the window at its rate limit (50 messages a second by default, per
connection).  Each entry is therefore kept small: a keyed 64-bit digest of (client id, command id) instead of
the strings, and the second it was seen as an int object shared by every entry of that second: about 65 bytes
an entry against about 195 for a tuple of the two strings and a float (tests/test_replay.py measures it).

The digest is keyed with random bytes drawn at start, so nobody can build two ids that collide on purpose; two
ids colliding by chance (a false ``replayed``) has a probability of about n² / 2^65 for n ids in the window:
below one in ten million for a million.
"""

from __future__ import annotations

import hashlib
import os

from bridge.core.reactor_types import Clock


class ReplayWindow:
    """Remember (client id, command id) pairs for ``span`` seconds of ``clock``."""

    def __init__(self, clock: Clock, span: float) -> None:
        self._clock = clock
        self._span = span
        self._key = os.urandom(16)
        # digest -> the second it was first seen.  Dicts keep insertion order and seconds only grow, so the
        # oldest entries are first and forgetting costs only what expired.
        self._seen: dict[int, int] = {}
        self._second = -1  # the int object of the current second, shared by its entries

    def __len__(self) -> int:
        return len(self._seen)

    def first_time(self, client_id: str, command_id: str) -> bool:
        """Record the pair; False if it was already seen less than ``span`` seconds ago (a replay)."""
        now = int(self._clock.seconds())
        if now != self._second:
            self._second = now
        horizon = now - self._span
        seen = self._seen
        while seen:
            oldest = next(iter(seen))
            # Whole seconds: an entry is kept up to a second longer than ``span``, never forgotten early.
            if seen[oldest] >= horizon - 1:
                break
            del seen[oldest]
        client = client_id.encode("utf-8")
        # the client id's length first: no pair of strings can spell the same bytes as another pair
        digest = hashlib.blake2b(len(client).to_bytes(4, "big") + client + command_id.encode("utf-8"),
                                 digest_size=8, key=self._key).digest()
        key = int.from_bytes(digest, "little")
        if key in seen:
            return False
        seen[key] = self._second
        return True
