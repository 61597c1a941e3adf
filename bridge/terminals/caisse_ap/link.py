"""The Concert serial link layer as a pure state machine: bytes and clock readings in, bytes and events out.

One session carries one frame, opened by whichever side has something to say::

    sender                        receiver
    ENQ  ------------------------->
         <-------------------------  ACK
    STX payload ETX LRC ---------->
         <-------------------------  ACK        (NAK: bad LRC, the sender repeats the frame, at most 3 times)
    EOT  ------------------------->

The cash register opens a session for its request, then the terminal opens one for its answer.  LRC is the XOR of
every byte after STX up to and including ETX.  Bytes that fit no step (line noise) are ignored.

:class:`ConcertLink` does no I/O and reads no clock.  Every call takes ``now`` (seconds, any monotonic origin) and
returns a list of events: :class:`Write` (bytes to put on the line, in order) and what happened.  The caller arranges
for :meth:`ConcertLink.tick` to be called once ``now`` reaches :attr:`ConcertLink.deadline`.  The same machine
plays either side: the bridge (cash register) and the simulated terminal.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce
from operator import xor
from typing import Optional, Union

STX = 0x02
ETX = 0x03
EOT = 0x04
ENQ = 0x05
ACK = 0x06
NAK = 0x15

#: Seconds to wait for ACK or NAK after ENQ or a frame ("wait up to 3 seconds", Telium).
ACK_TIMEOUT = 3.0
#: Seconds the peer may stay silent inside its own session: before STX, between two bytes of a frame, before EOT.
BYTE_TIMEOUT = 3.0
#: Seconds between an unanswered ENQ (followed by EOT) and the next try.
RETRY_DELAY = 1.0
#: How many times ENQ is tried before the peer is declared silent.
ENQ_ATTEMPTS = 3
#: How many times a frame is repeated after a NAK.
MAX_RESENDS = 3
#: Longest frame body accepted; a Caisse-AP answer with a receipt is under 1 KiB.
MAX_FRAME = 4096

# States, named from this side's point of view.
IDLE = "idle"  # no session; waiting for an answer when an answer deadline is set
WAIT_ENQ_ACK = "wait_enq_ack"  # we sent ENQ
ENQ_PAUSE = "enq_pause"  # ENQ went unanswered; EOT sent, pausing before the next try
WAIT_FRAME_ACK = "wait_frame_ack"  # we sent the frame
RECV_WAIT_STX = "recv_wait_stx"  # the peer's ENQ was acknowledged; its frame should start
RECV_BODY = "recv_body"  # inside the peer's frame
RECV_LRC = "recv_lrc"  # ETX seen; the next byte is the LRC
RECV_WAIT_EOT = "recv_wait_eot"  # the peer's frame was acknowledged; its EOT should follow

_SEND = "send"
_PING = "ping"


@dataclass(frozen=True)
class Write:
    """Bytes to write to the line now."""

    data: bytes


@dataclass(frozen=True)
class Delivered:
    """The peer acknowledged our frame (the session is closed with EOT)."""

    attempts: int


@dataclass(frozen=True)
class Received:
    """The peer sent a frame, we acknowledged it and the session is over."""

    payload: bytes


@dataclass(frozen=True)
class PingResult:
    """The peer answered ENQ (ACK, or NAK when busy) or did not."""

    alive: bool


@dataclass(frozen=True)
class SendFailed:
    """Our frame could not be delivered.  ``frame_sent``: the frame was written, so the peer may have read it."""

    code: str
    message: str
    frame_sent: bool


@dataclass(frozen=True)
class ReceiveFailed:
    """The peer started a frame but no readable copy arrived."""

    code: str
    message: str


@dataclass(frozen=True)
class AnswerTimeout:
    """No frame came from the peer within the answer timeout given to :meth:`ConcertLink.send`."""


Event = Union[Write, Delivered, Received, PingResult, SendFailed, ReceiveFailed, AnswerTimeout]


def lrc(body: bytes) -> int:
    """XOR of ``body`` (the bytes after STX, ETX included)."""
    return reduce(xor, body, 0)


def check_payload(payload: bytes) -> None:
    """Raise ``ValueError`` unless ``payload`` can travel in a frame: 7-bit printable ASCII, 1..MAX_FRAME bytes."""
    if not 1 <= len(payload) <= MAX_FRAME:
        raise ValueError(f"a frame carries 1 to {MAX_FRAME} bytes, not {len(payload)}")
    for index, byte in enumerate(payload):
        if not 0x20 <= byte <= 0x7E:
            raise ValueError(f"byte 0x{byte:02x} at offset {index} cannot travel in a frame")


def encode_frame(payload: bytes, corrupt: bool = False) -> bytes:
    """``STX payload ETX LRC``; ``corrupt`` spoils the LRC (for simulating a noisy line)."""
    check_payload(payload)
    body = payload + bytes([ETX])
    check = lrc(body) ^ (0x55 if corrupt else 0)
    return bytes([STX]) + body + bytes([check])


class ConcertLink:
    """One end of a Concert serial link.  See the module docstring for the calling convention.

    Fault injection for simulators: ``nak_frames`` good frames are refused with NAK anyway, ``ack_frames=False``
    swallows every frame without a word, and the first ``corrupt_frames`` frames this side sends carry a wrong LRC.
    """

    def __init__(
        self,
        ack_timeout: float = ACK_TIMEOUT,
        byte_timeout: float = BYTE_TIMEOUT,
        retry_delay: float = RETRY_DELAY,
        enq_attempts: int = ENQ_ATTEMPTS,
        max_resends: int = MAX_RESENDS,
        max_frame: int = MAX_FRAME,
        *,
        nak_frames: int = 0,
        ack_frames: bool = True,
        corrupt_frames: int = 0,
    ) -> None:
        self.ack_timeout = ack_timeout
        self.byte_timeout = byte_timeout
        self.retry_delay = retry_delay
        self.enq_attempts = enq_attempts
        self.max_resends = max_resends
        self.max_frame = max_frame
        self._nak_frames = nak_frames
        self._ack_frames = ack_frames
        self._corrupt_frames = corrupt_frames

        self.state = IDLE
        self._step_deadline: Optional[float] = None
        self._answer_deadline: Optional[float] = None
        # The outgoing session.
        self._purpose: Optional[str] = None
        self._payload = b""
        self._enq_tries = 0
        self._frame_tries = 0
        self._answer_timeout: Optional[float] = None
        self._queued: Optional[tuple[bytes, Optional[float]]] = None
        #: True once the frame of the latest :meth:`send` was written: from then on the peer may have read it.
        self.frame_sent = False
        # The incoming session.
        self._body = bytearray()
        self._pending: Optional[bytes] = None
        self._frame_seen = False
        self._bad_frames = 0

    # --- inputs -------------------------------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """No session in either direction and nothing queued (an answer may still be awaited)."""
        return self.state == IDLE and self._queued is None

    @property
    def awaiting_answer(self) -> bool:
        return self._answer_deadline is not None

    @property
    def deadline(self) -> Optional[float]:
        """When :meth:`tick` must be called next, or None when nothing is timed."""
        if self.state == IDLE:
            return self._answer_deadline
        return self._step_deadline

    def send(self, payload: bytes, now: float, answer_timeout: Optional[float] = None) -> list[Event]:
        """Open a session carrying ``payload``; with ``answer_timeout``, then expect the peer's frame within it.

        While the peer is in the middle of a session (or a ping runs), the send waits for it to end.
        """
        check_payload(payload)
        if self._purpose == _SEND or self._queued is not None:
            raise RuntimeError("a frame is already being sent")
        self.frame_sent = False
        self._answer_deadline = None
        if self.state != IDLE:
            self._queued = (payload, answer_timeout)
            return []
        return self._start(_SEND, payload, answer_timeout, now)

    def ping(self, now: float) -> list[Event]:
        """ENQ then EOT, to learn whether the peer is listening.  Only when :attr:`idle`."""
        if not self.idle:
            raise RuntimeError("the link is busy")
        return self._start(_PING, b"", None, now)

    def receive(self, data: bytes, now: float) -> list[Event]:
        events: list[Event] = []
        for byte in data:
            events += self._byte(byte, now)
        return events

    def tick(self, now: float) -> list[Event]:
        deadline = self.deadline
        if deadline is None or now < deadline:
            return []
        state = self.state
        if state == IDLE:
            self._answer_deadline = None
            return [AnswerTimeout()]
        if state == WAIT_ENQ_ACK:
            return self._enq_unanswered(now)
        if state == ENQ_PAUSE:
            self._enq_tries += 1
            self._enter(WAIT_ENQ_ACK, now + self.ack_timeout)
            return [Write(bytes([ENQ]))]
        if state == WAIT_FRAME_ACK:
            return [Write(bytes([EOT]))] + self._end_outgoing(now, SendFailed(
                "no_ack",
                f"The payment terminal did not confirm it received the request within {self.ack_timeout:g} s.",
                frame_sent=True,
            ))
        if state == RECV_WAIT_EOT:  # the frame is good and acknowledged; a missing EOT changes nothing
            return self._end_incoming(now)
        return self._end_incoming(now, timed_out=True)

    # --- outgoing session ---------------------------------------------------------------------------------

    def _start(self, purpose: str, payload: bytes, answer_timeout: Optional[float], now: float) -> list[Event]:
        self._purpose = purpose
        self._payload = payload
        self._answer_timeout = answer_timeout
        self._enq_tries = 1
        self._frame_tries = 0
        self._enter(WAIT_ENQ_ACK, now + self.ack_timeout)
        return [Write(bytes([ENQ]))]

    def _enq_unanswered(self, now: float) -> list[Event]:
        if self._purpose == _PING:
            return [Write(bytes([EOT]))] + self._end_outgoing(now, PingResult(False))
        if self._enq_tries < self.enq_attempts:
            self._enter(ENQ_PAUSE, now + self.retry_delay)
            return [Write(bytes([EOT]))]
        return [Write(bytes([EOT]))] + self._end_outgoing(now, SendFailed(
            "no_answer_to_enq",
            f"The payment terminal did not answer the bridge's call (ENQ) after {self._enq_tries} tries: check "
            "that it is switched on, set to cash-register mode and on the configured cable.",
            frame_sent=False,
        ))

    def _write_frame(self, now: float) -> list[Event]:
        corrupt = self._corrupt_frames > 0
        if corrupt:
            self._corrupt_frames -= 1
        self._frame_tries += 1
        self.frame_sent = True
        self._enter(WAIT_FRAME_ACK, now + self.ack_timeout)
        return [Write(encode_frame(self._payload, corrupt))]

    def _end_outgoing(self, now: float, outcome: Event) -> list[Event]:
        purpose, self._purpose = self._purpose, None
        self._enter(IDLE, None)
        if purpose == _SEND and isinstance(outcome, Delivered) and self._answer_timeout is not None:
            self._answer_deadline = now + self._answer_timeout
        return [outcome] + self._start_queued(now)

    def _start_queued(self, now: float) -> list[Event]:
        if self._queued is None or self.state != IDLE:
            return []
        (payload, answer_timeout), self._queued = self._queued, None
        return self._start(_SEND, payload, answer_timeout, now)

    # --- bytes --------------------------------------------------------------------------------------------

    def _byte(self, byte: int, now: float) -> list[Event]:
        state = self.state
        if state == IDLE:
            if byte == ENQ:
                return self._accept_session(now)
            return []
        if state == WAIT_ENQ_ACK:
            if self._purpose == _PING and byte in (ACK, NAK):  # NAK: busy, but listening
                return [Write(bytes([EOT]))] + self._end_outgoing(now, PingResult(True))
            if byte == ACK:
                return self._write_frame(now)
            if byte == NAK:  # refused: same as no answer
                return self._enq_unanswered(now)
            return []
        if state == WAIT_FRAME_ACK:
            if byte == ACK:
                return [Write(bytes([EOT]))] + self._end_outgoing(now, Delivered(self._frame_tries))
            if byte == NAK:
                if self._frame_tries <= self.max_resends:
                    return self._write_frame(now)
                return [Write(bytes([EOT]))] + self._end_outgoing(now, SendFailed(
                    "frame_rejected",
                    f"The payment terminal refused the request {self._frame_tries} times (NAK): check the line "
                    "settings (7E1 or 8N1, baud rate) and the protocol in the terminal's configuration.",
                    frame_sent=True,
                ))
            return []
        if state == RECV_WAIT_STX:
            if byte == STX:
                return self._start_body(now)
            if byte == ENQ:  # the peer missed our ACK
                self._enter(RECV_WAIT_STX, now + self.byte_timeout)
                return [Write(bytes([ACK]))]
            if byte == EOT:
                return self._end_incoming(now)
            return []
        if state == RECV_BODY:
            if byte == STX:  # a new start: what came before was noise
                return self._start_body(now)
            if byte == EOT:
                return self._end_incoming(now)
            if byte == ETX:
                self._enter(RECV_LRC, now + self.byte_timeout)
                return []
            if len(self._body) >= self.max_frame:
                self._bad_frames += 1
                self._enter(RECV_WAIT_STX, now + self.byte_timeout)
                return [Write(bytes([NAK]))]
            self._body.append(byte)
            self._enter(RECV_BODY, now + self.byte_timeout)
            return []
        if state == RECV_LRC:
            return self._check_frame(byte, now)
        if state == RECV_WAIT_EOT:
            if byte == EOT:
                return self._end_incoming(now)
            if byte == STX:  # the peer missed our ACK and repeats the frame
                return self._start_body(now)
            if byte == ENQ:
                return self._end_incoming(now) + self._byte(byte, now)
            return []
        return []  # ENQ_PAUSE: we hold the line; whatever comes is noise

    def _accept_session(self, now: float) -> list[Event]:
        self._body = bytearray()
        self._pending = None
        self._frame_seen = False
        self._bad_frames = 0
        self._enter(RECV_WAIT_STX, now + self.byte_timeout)
        return [Write(bytes([ACK]))]

    def _start_body(self, now: float) -> list[Event]:
        self._frame_seen = True
        self._body = bytearray()
        self._enter(RECV_BODY, now + self.byte_timeout)
        return []

    def _check_frame(self, check: int, now: float) -> list[Event]:
        body = bytes(self._body) + bytes([ETX])
        good = lrc(body) == check and all(0x20 <= byte <= 0x7E for byte in self._body) and bool(self._body)
        if good and not self._ack_frames:
            self._enter(RECV_WAIT_STX, now + self.byte_timeout)
            return []
        if good and self._nak_frames > 0:
            self._nak_frames -= 1
            good = False
        if not good:
            self._bad_frames += 1
            self._enter(RECV_WAIT_STX, now + self.byte_timeout)
            return [Write(bytes([NAK]))]
        self._pending = bytes(self._body)
        self._enter(RECV_WAIT_EOT, now + self.byte_timeout)
        return [Write(bytes([ACK]))]

    def _end_incoming(self, now: float, timed_out: bool = False) -> list[Event]:
        pending, self._pending = self._pending, None
        self._enter(IDLE, None)
        events: list[Event] = []
        if pending is not None:
            self._answer_deadline = None
            events.append(Received(pending))
        elif self._frame_seen:
            self._answer_deadline = None
            if self._bad_frames:
                events.append(ReceiveFailed(
                    "bad_frame",
                    f"The payment terminal's message arrived damaged {self._bad_frames} time(s) (wrong checksum) "
                    "and no good copy followed.",
                ))
            elif timed_out:
                events.append(ReceiveFailed("receive_timeout", "The payment terminal stopped in the middle of "
                                                               "its message."))
            else:
                events.append(ReceiveFailed("session_aborted", "The payment terminal broke off its message."))
        self._frame_seen = False
        self._bad_frames = 0
        return events + self._start_queued(now)

    def _enter(self, state: str, deadline: Optional[float]) -> None:
        self.state = state
        self._step_deadline = deadline
