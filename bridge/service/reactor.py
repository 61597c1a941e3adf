"""Twisted's global reactor for the commands that run it (the daemon, the demo, the one-shot commands)."""

from __future__ import annotations

from typing import Any


def global_reactor() -> Any:
    """Twisted's global reactor, installed by this first import, for a command that runs it.

    Typed ``Any`` on purpose: mypy reads the module ``twisted.internet.reactor`` as a module without attributes
    (Twisted 22.4, Debian bookworm) or as a zope.interface that it cannot call without the mypy-zope plugin
    (current Twisted), so ``reactor.run()`` fails the type check on either stack (pyproject.toml).
    """
    from twisted.internet import reactor

    return reactor
