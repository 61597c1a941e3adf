"""Two small Deferred helpers the bridge uses in several places, written once.

- :func:`follow`: wait for a Deferred someone else owns, without touching its result chain;
- :class:`OnceMore`: "run now; asked again meanwhile, run once more when this run ends" (the uplink's command
  fetcher and feedback poster: a wake-up during a fetch must not be lost, and ten must not make ten fetches).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure


def follow(d: Deferred) -> Deferred:
    """A Deferred that fires with ``d``'s result when ``d`` does, and leaves ``d``'s own chain as it was (several
    may wait on one ``d``).  Even when ``d`` was called already: its chain may be paused on another Deferred, and
    then this fires when the chain goes on."""
    follower: Deferred = Deferred()

    def fire(result: Any) -> Any:
        if not follower.called:
            if isinstance(result, Failure):
                follower.errback(result)
            else:
                follower.callback(result)
        return result

    d.addBoth(fire)
    return follower


class OnceMore:
    """Runs ``run`` (a function returning a Deferred) when asked; asked while a run is under way, it runs once
    more after it, however often it was asked.  ``then(result, again)`` is called when a run ends, with whether
    another run was asked for meanwhile (the owner then asks again, or schedules its next run)."""

    def __init__(self, run: Callable[[], Deferred], then: Callable[[Any, bool], None]) -> None:
        self._run = run
        self._then = then
        self.running: Optional[Deferred] = None
        self._again = False

    def ask(self) -> None:
        if self.running is not None:
            self._again = True
            return
        self.running = self._run()
        self.running.addBoth(self._ended)

    def _ended(self, result: Any) -> None:
        self.running = None
        again, self._again = self._again, False
        self._then(result, again)

    def stop(self) -> "Deferred[None]":
        """Cancel the run under way; fires once it has ended (at once when none runs)."""
        self._again = False
        running = self.running
        if running is None:
            return succeed(None)
        waiter: Deferred = Deferred()
        running.addBoth(lambda _: waiter.callback(None) if not waiter.called else None)
        running.cancel()
        return waiter
