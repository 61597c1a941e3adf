"""A terminal driver that records what would have gone to the terminal and ends each payment when told."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from bridge.core.contract import ITerminalDriver, Outcome, PaymentRequest, TerminalStatus


@implementer(ITerminalDriver)
class RecordingDriver:
    """A driver that records what would have gone to the terminal and ends when the test says so."""

    kind = "recording"

    def __init__(self, name: str = "till-1") -> None:
        self.name = name
        self.sent: list[PaymentRequest] = []
        self.runs: list[tuple[PaymentRequest, Deferred]] = []
        self.hooks: dict[str, Any] = {}
        self.refuse_link = False  # True: behave like a terminal that cannot be reached
        self.connecting = False  # True: never get as far as sending (a connection that hangs)
        self.started = self.stopped = False  # told by the daemon

    def pay(self, request: PaymentRequest, before_send) -> Deferred:
        result: Deferred = Deferred()
        self.runs.append((request, result))
        self.hooks[request.payment_id] = before_send
        if self.refuse_link:
            return succeed(Outcome("failed", "terminal_unreachable", "The terminal could not be reached."))
        if self.connecting:
            return result

        def send(_: Any) -> Deferred:
            self.sent.append(request)
            return result

        def not_sent(failure: Any) -> Outcome:
            code = getattr(failure.value, "code", "journal_unavailable")
            return Outcome("failed", code, "Not sent.")

        return before_send().addCallbacks(send, not_sent)

    def finish(self, outcome: Outcome, index: int = -1) -> None:
        self.runs[index][1].callback(outcome)

    def status(self) -> TerminalStatus:
        return TerminalStatus("idle", "recording")

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.stopped = True

    def cancel(self, payment_id):
        return None  # like a terminal without a cancel message

    def recover(self, payment_id, details):
        return succeed(None)
