"""What a reload (SIGHUP, `systemctl reload`) can apply to a running bridge, and what needs a restart.

A reload re-reads the configuration and the clients file.  Clients and uplinks are taken at once: a new client is
let in by its next LAN session, uplinks are started, restarted or stopped.  Everything else (terminals, the
listener, TLS, limits, the state directory) belongs to parts that run payments or hold sockets; a change there is
logged as needing a restart, and the running bridge keeps the values it started with.
"""

from __future__ import annotations

from dataclasses import fields, replace

from bridge.config import BridgeConfig

#: The settings a reload applies.
RELOADABLE = frozenset({"clients", "uplinks"})
#: Settings that name nothing the running bridge uses (the file's own path).
IGNORED = frozenset({"path"})


def restart_needed(old: BridgeConfig, new: BridgeConfig) -> list[str]:
    """The settings that differ between ``old`` and ``new`` but only take effect at a restart."""
    return [f.name for f in fields(BridgeConfig)
            if f.name not in RELOADABLE | IGNORED and getattr(old, f.name) != getattr(new, f.name)]


def reloaded(old: BridgeConfig, new: BridgeConfig) -> BridgeConfig:
    """``old`` with ``new``'s clients and uplinks."""
    return replace(old, clients=new.clients, uplinks=new.uplinks)
