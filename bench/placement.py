"""Which CPUs the benchmark's processes run on.

A shop's bridge runs alone on its box, its client is in the cloud and its terminals are devices of their own.
Here they all share this machine, and the bridge keeps its threads on one CPU (``[bridge] cpu = auto``: the last
CPU it may use).  So that the measuring client and the simulated terminals do not take turns with the bridge on
that CPU, they run on the others; the floor's echo server (floor.py) runs on the bridge's CPU, so that the floor's
round trip crosses CPUs as a payment's does.  With a single CPU everything shares it, as before."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Placement:
    #: The CPUs the benchmark was started on.
    allowed: frozenset[int]
    #: The CPU the bridge keeps its threads on (the last allowed), or None when there is only one.
    bridge: Optional[int]

    @property
    def harness(self) -> frozenset[int]:
        """The measuring client's and the simulated terminals' CPUs: all but the bridge's."""
        return self.allowed - {self.bridge} if self.bridge is not None else self.allowed

    @property
    def server(self) -> frozenset[int]:
        """The floor's echo server's CPU: the bridge's."""
        return frozenset({self.bridge}) if self.bridge is not None else self.allowed

    def describe(self) -> str:
        if self.bridge is None:
            return "one CPU: the bridge, the measuring client, the simulated terminals and the echo share it"
        return (f"the bridge on CPU {self.bridge} (its [bridge] cpu = auto) and the floor's echo server with it; "
                f"the measuring client and the simulated terminals on CPU {cpu_list(self.harness)}")


def plan(allowed: Optional[set[int]] = None) -> Placement:
    cpus = frozenset(os.sched_getaffinity(0) if allowed is None else allowed)
    return Placement(cpus, max(cpus) if len(cpus) > 1 else None)


def confine(cpus: frozenset[int]) -> None:
    """Keep the calling process (and the children it starts from now on) on ``cpus``."""
    os.sched_setaffinity(0, cpus)


def cpu_list(cpus: "frozenset[int] | list[int]") -> str:
    """``0, 1``: CPU numbers as the report prints them."""
    return ", ".join(str(c) for c in sorted(cpus))
