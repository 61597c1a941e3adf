"""Errors as values: a stable code for programs and a sentence for people.

Every error that crosses the command channel is a :class:`BridgeError`.  The code is part of the protocol
(docs/protocol.md lists them all); the message is written for a cashier or an installer.
"""

from __future__ import annotations


class BridgeError(Exception):
    """A refusal with a stable ``code`` and a ``message`` a cashier can read."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}
