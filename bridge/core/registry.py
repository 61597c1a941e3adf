"""The terminals the bridge knows, and which of them is busy with which payment."""

from __future__ import annotations

from typing import Any, Iterable, Optional

from bridge.errors import BridgeError
from bridge.core.contract import TerminalDriver


class TerminalRegistry:
    """One payment at a time per terminal."""

    def __init__(self, drivers: Iterable[TerminalDriver]) -> None:
        self._drivers = {d.name: d for d in drivers}
        self._busy: dict[str, str] = {}

    def names(self) -> list[str]:
        return sorted(self._drivers)

    def driver(self, name: object) -> TerminalDriver:
        if isinstance(name, str) and name in self._drivers:
            return self._drivers[name]
        raise BridgeError("unknown_terminal", f"There is no terminal named {name!r} on this bridge.")

    def reserve(self, name: str, payment_id: str) -> TerminalDriver:
        driver = self.driver(name)
        if name in self._busy:
            raise BridgeError(
                "terminal_busy",
                f"The terminal {name} is busy with another payment. Wait for it to finish and try again.",
            )
        self._busy[name] = payment_id
        return driver

    def release(self, name: str, payment_id: str) -> None:
        if self._busy.get(name) == payment_id:
            del self._busy[name]

    def current_payment(self, name: str) -> Optional[str]:
        return self._busy.get(name)

    def drivers(self) -> list[TerminalDriver]:
        """Every driver, in name order (the daemon starts and stops them)."""
        return [self._drivers[name] for name in self.names()]

    def status(self, name: str) -> dict[str, Any]:
        """``terminal.status``: the driver's :class:`~bridge.core.contract.TerminalStatus`, its name, its type and
        the payment it runs (``busy`` while the registry holds one for it)."""
        driver = self.driver(name)
        status = driver.status().as_dict()
        status.update({"name": name, "type": driver.kind, "payment": self._busy.get(name)})
        if name in self._busy:
            status["state"] = "busy"
        return status
