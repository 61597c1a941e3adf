"""The load generator's clients: a POS on the bridge's WebSocket (Twisted, the client library the tests use), the
same payment sent straight to a simulator over TCP (the baseline), and a blocking WebSocket client for the
status page phase (whose reactor cannot be run a second time)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Optional

from common import AMOUNT, CURRENCY, BenchError


class BridgeClient:
    """One POS: a TLS WebSocket kept open, hello once, one payment at a time on its terminal."""

    def __init__(self, proto: Any, factory: Any, terminal: str) -> None:
        from twisted.internet.defer import Deferred  # noqa: F401

        self.proto, self.terminal = proto, terminal
        self._waiting: dict[str, Any] = {}
        #: The seq of the last final event handled, not yet acknowledged: carried by the next payment.start
        #: (docs/protocol.md, "Events and delivery"), or sent as events.ack by :meth:`ack_rest`.
        self.pending_ack: Optional[int] = None
        factory.on_event = self._on_event

    def _on_event(self, event: dict[str, Any]) -> None:
        payment = event.get("payment") or {}
        if not payment.get("final"):
            return
        waiter = self._waiting.pop(payment.get("command_id"), None)
        if waiter is not None:
            waiter.callback((time.perf_counter(), payment["state"], event["seq"]))

    def pay(self):
        """Start a payment; fires with (seconds from sending payment.start to the final event, final state)."""
        from twisted.internet.defer import Deferred

        command_id = uuid.uuid4().hex
        final: Deferred = Deferred()
        self._waiting[command_id] = final
        args = {"terminal": self.terminal, "amount": AMOUNT, "currency": CURRENCY, "kind": "debit", "method": "card"}
        if self.pending_ack is not None:
            # Acknowledge like a real client (cumulative: a final event covers the ones before it), in this
            # command rather than a message of its own.
            args["ack"], self.pending_ack = self.pending_ack, None
        t0 = time.perf_counter()
        reply = self.proto.call("payment.start", args, message_id=command_id)

        def refused(failure: Any) -> None:
            waiter = self._waiting.pop(command_id, None)
            if waiter is not None:
                waiter.errback(failure)

        reply.addErrback(refused)

        def ended(result: Any) -> tuple[float, str]:
            t1, state, seq = result
            self.pending_ack = max(seq, self.pending_ack or 0)
            return t1 - t0, state

        return final.addCallback(ended)

    def ack_rest(self):
        """Send what no payment.start carried as an events.ack of its own (before closing)."""
        from twisted.internet.defer import succeed

        if self.pending_ack is None:
            return succeed(None)
        seq, self.pending_ack = self.pending_ack, None
        return self.proto.call("events.ack", {"seq": seq}).addErrback(lambda f: None)


def direct_payment(reactor: Any, port: int, payload: bytes):
    """The same payment straight to the simulator: connect, write, read until the answer parses whole and the
    terminal closes (the driver's end-of-answer path when the terminal closes), close.  Fires with (seconds,
    AE code)."""
    from twisted.internet.defer import Deferred
    from twisted.internet.endpoints import TCP4ClientEndpoint
    from twisted.internet.protocol import Factory, Protocol

    from bridge.terminals.caisse_ap.codec import AnswerParser, MalformedAnswer

    done: Deferred = Deferred()
    t0 = time.perf_counter()

    class Reader(Protocol):
        def connectionMade(self) -> None:
            self.parser = AnswerParser()
            self.bad: Optional[str] = None
            self.transport.write(payload)

        def dataReceived(self, data: bytes) -> None:
            try:
                self.parser.feed(data)
            except MalformedAnswer as error:
                self.bad = error.reason
                self.transport.loseConnection()

        def connectionLost(self, reason: Any = None) -> None:
            elapsed = time.perf_counter() - t0
            if self.bad is None and self.parser.complete:
                done.callback((elapsed, self.parser.as_dict().get("AE", "")))
            else:
                done.errback(BenchError(f"direct payment: no whole answer ({self.bad or 'link closed early'})"))

    class OneReader(Factory):
        noisy = False

        def buildProtocol(self, addr: Any) -> Reader:
            return Reader()

    connecting = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=10).connect(OneReader())
    connecting.addErrback(lambda f: done.errback(f) if not done.called else None)
    return done


class BlockingBridgeClient:
    """One signed WebSocket client without a reactor: hello, then one payment at a time."""

    def __init__(self, url: str, client: dict[str, str], cafile: str) -> None:
        import ssl

        import websocket

        from bridge.api.session import SUBPROTOCOL

        self.client = client
        self.pending_ack: Optional[int] = None
        self.ws = websocket.create_connection(url, subprotocols=[SUBPROTOCOL], timeout=30,
                                              sslopt={"ca_certs": cafile, "cert_reqs": ssl.CERT_REQUIRED,
                                                      "check_hostname": False})
        self.call("hello", {"client": client["client_id"]})

    def send(self, op: str, args: dict[str, Any], message_id: Optional[str] = None) -> str:
        from bridge.api import signing

        message_id = message_id or uuid.uuid4().hex
        message = {"id": message_id, "op": op, "ts": int(time.time()), "args": args}
        self.ws.send(signing.signed_bytes(message, self.client["secret_in"]).decode())
        return message_id

    def call(self, op: str, args: dict[str, Any]) -> Any:
        message_id = self.send(op, args)
        while True:
            message = json.loads(self.ws.recv())
            if message.get("re") == message_id:
                if not message.get("ok"):
                    raise BenchError(f"{op} refused: {message.get('error')}")
                return message.get("result")

    def pay(self, terminal: str) -> tuple[float, str]:
        """(seconds from sending payment.start to its final event, final state)."""
        args: dict[str, Any] = {"terminal": terminal, "amount": AMOUNT, "currency": CURRENCY}
        if self.pending_ack is not None:
            args["ack"], self.pending_ack = self.pending_ack, None  # acknowledged in the next command
        t0 = time.perf_counter()
        command_id = self.send("payment.start", args)
        while True:
            message = json.loads(self.ws.recv())
            payment = message.get("payment") or {}
            if payment.get("command_id") == command_id and payment.get("final"):
                elapsed = time.perf_counter() - t0
                self.pending_ack = message["seq"]
                return elapsed, payment["state"]
            if message.get("re") == command_id and not message.get("ok"):
                raise BenchError(f"payment.start refused: {message.get('error')}")

    def close(self) -> None:
        if self.pending_ack is not None:
            self.send("events.ack", {"seq": self.pending_ack})
        self.ws.close()
