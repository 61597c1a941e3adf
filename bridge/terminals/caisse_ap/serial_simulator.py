"""A Caisse-AP terminal behind a pseudo-terminal, for the demo and the tests: the terminal side of the Concert link.

It creates a pty pair; the bridge opens the slave side as its serial device (any baud rate or line setting is
accepted there) and the simulator plays the terminal on the master side, with the TCP simulator's scripted
outcomes (:class:`SimulatorScript`) and link faults (:class:`LinkFaults`).  With ``device_link`` the device is also
reachable through a symbolic link that disappears when the device vanishes and points at the new pty when it comes
back, as /dev/serial/by-id/... does when a USB cable is pulled and plugged again.
"""

from __future__ import annotations

import os
import tty
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional, cast

from twisted.internet import abstract, fdesc
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReactorFDSet
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from bridge.core.reactor_types import DelayedCall, FDClock
from bridge.terminals.caisse_ap import concert_v2
from bridge.terminals.caisse_ap.codec import MalformedAnswer, encode_fields, parse_message
from bridge.terminals.caisse_ap.link import ConcertLink, Event, Received, ReceiveFailed, SendFailed
from bridge.terminals.caisse_ap.serial_options import PROTOCOL_TLV, PROTOCOL_V2, PROTOCOLS
if TYPE_CHECKING:
    from bridge.terminals.caisse_ap.serial import LinkRunner
from bridge.terminals.caisse_ap.simulator import (
    APPROVE,
    NEVER,
    SUPPORTED_CURRENCIES,
    SimulatorScript,
    answer_fields,
)

#: What a garbled terminal sends: printable, framed correctly, but no message of either protocol.
GARBAGE = b"CZ0040300AE0X10"
_V2_STATUS = {APPROVE: concert_v2.STATUS_ACCEPTED}


@dataclass(frozen=True)
class LinkFaults:
    """What goes wrong on the line, on top of the script's outcome."""

    nak_frames: int = 0  # refuse this many good request frames with NAK
    no_ack: bool = False  # never acknowledge a request frame
    bad_lrc: int = 0  # send this many answer frames with a wrong LRC before a good one
    byte_gap: float = 0.0  # slow bytes: seconds between two bytes written
    deaf: bool = False  # answer nothing at all, not even ENQ

    def __post_init__(self) -> None:
        if self.nak_frames < 0 or self.bad_lrc < 0 or self.byte_gap < 0:
            raise ValueError("fault counts and byte_gap cannot be negative")


class _PtyMaster(abstract.FileDescriptor):
    """The master side of a pty as a Twisted transport (what the terminal reads and writes)."""

    connected = 1

    def __init__(self, reactor: FDClock, fd: int, protocol: Protocol) -> None:
        abstract.FileDescriptor.__init__(self, cast(IReactorFDSet, reactor))
        self._fd = fd
        fdesc.setNonBlocking(fd)
        self.protocol = protocol
        protocol.makeConnection(self)
        self.startReading()

    def fileno(self) -> int:
        return self._fd

    def doRead(self) -> Any:
        return fdesc.readFromFD(self._fd, self.protocol.dataReceived)

    def writeSomeData(self, data: bytes) -> Any:
        return fdesc.writeToFD(self._fd, data)

    def close_now(self) -> None:
        """Close at once, dropping unwritten bytes: a device does not flush when its cable is pulled."""
        if not self.connected:
            return
        self.stopReading()
        self.stopWriting()
        self.connectionLost(Failure(ConnectionDone("the simulated device vanished")))

    def connectionLost(self, reason: Failure) -> None:
        abstract.FileDescriptor.connectionLost(self, reason)
        os.close(self._fd)
        self.protocol.connectionLost(reason)


class _TerminalSide(Protocol):
    def __init__(self, terminal: SerialTerminal) -> None:
        self._terminal = terminal

    def dataReceived(self, data: bytes) -> None:
        self._terminal._data(self, data)


class SerialTerminal:
    """A simulated Caisse-AP (or Concert V2) terminal on a pty.  :meth:`open` it, give :attr:`path` to the bridge.

    Keeps every request payload received in :attr:`requests`.  ``reappear_after``: after vanishing because the
    script said ``disconnect``, come back on a new pty after this many seconds (None: stay away).
    """

    _log = Logger()

    def __init__(
        self,
        reactor: FDClock,
        script: SimulatorScript = SimulatorScript(),
        protocol: str = PROTOCOL_TLV,
        faults: LinkFaults = LinkFaults(),
        device_link: Optional[str] = None,
        reappear_after: Optional[float] = None,
        currencies: frozenset[str] = SUPPORTED_CURRENCIES,
        ack_timeout: float = 3.0,
        record_path: Optional[str] = None,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
        self.reactor = reactor
        self.script = script
        self.protocol = protocol
        self.faults = faults
        self.device_link = device_link
        self.reappear_after = reappear_after
        self.currencies = currencies
        self.ack_timeout = ack_timeout
        self.record_path = record_path
        self.requests: list[bytes] = []
        #: Every byte the bridge wrote to the device, counted (ENQ of health checks included).
        self.bytes_received = 0
        self.slave_path: Optional[str] = None
        self._master: Optional[_PtyMaster] = None
        self._side: Optional[_TerminalSide] = None
        self._slave_fd: Optional[int] = None
        self._runner: Optional[LinkRunner] = None
        self._calls: list[DelayedCall] = []
        self._out = bytearray()
        self._pump: Optional[DelayedCall] = None

    @property
    def path(self) -> Optional[str]:
        """The device to configure: the symbolic link if there is one, else the pty's slave."""
        return self.device_link or self.slave_path

    @property
    def present(self) -> bool:
        return self._master is not None

    def open(self) -> str:
        """Create the pty pair (and point the link at it); returns :attr:`path`."""
        if self._master is not None:
            raise RuntimeError("the simulated device is already present")
        master_fd, slave_fd = os.openpty()
        # Raw, like the bridge will set it: no echo, no line editing, no CR/LF translation.
        tty.setraw(slave_fd)
        # Holding the slave open keeps the master readable while the bridge closes and reopens its side.
        self._slave_fd = slave_fd
        self.slave_path = os.ttyname(slave_fd)
        link = ConcertLink(
            ack_timeout=self.ack_timeout,
            nak_frames=self.faults.nak_frames,
            ack_frames=not self.faults.no_ack,
            corrupt_frames=self.faults.bad_lrc,
        )
        self._side = _TerminalSide(self)
        from bridge.terminals.caisse_ap.serial import LinkRunner  # the driver's module imports pyserial

        self._runner = LinkRunner(link, self.reactor, self._write, self._event)
        self._master = _PtyMaster(self.reactor, master_fd, self._side)
        if self.device_link:
            self._point_link(self.slave_path)
        self._log.info("Simulated serial terminal on {path}", path=self.path)
        assert self.path is not None
        return self.path

    def vanish(self) -> None:
        """Pull the cable: close the pty (the bridge's reads fail) and remove the symbolic link."""
        for call in self._calls:
            if call.active():
                call.cancel()
        self._calls = []
        if self._pump is not None and self._pump.active():
            self._pump.cancel()
        self._pump = None
        self._out.clear()
        if self._runner is not None:
            self._runner.stop()
            self._runner = None
        if self.device_link and os.path.islink(self.device_link):
            os.unlink(self.device_link)
        master, self._master = self._master, None
        self._side = None
        if master is not None:
            master.close_now()
        if self._slave_fd is not None:
            os.close(self._slave_fd)
            self._slave_fd = None

    def come_back(self) -> str:
        """Plug the cable again: a new pty (a new /dev/pts number) behind the same symbolic link."""
        self.vanish()
        return self.open()

    close = vanish

    def _point_link(self, target: str) -> None:
        assert self.device_link is not None
        temporary = f"{self.device_link}.new"
        if os.path.lexists(temporary):
            os.unlink(temporary)
        os.symlink(target, temporary)
        os.replace(temporary, self.device_link)

    # --- the line -----------------------------------------------------------------------------------------

    def _data(self, side: _TerminalSide, data: bytes) -> None:
        if side is not self._side or self._runner is None:
            return
        self.bytes_received += len(data)
        if not self.faults.deaf:
            self._runner.feed(data)

    def _write(self, data: bytes) -> None:
        if self._master is None:
            return
        if not self.faults.byte_gap:
            self._master.write(data)
            return
        self._out += data
        if self._pump is None:
            self._write_one()

    def _write_one(self) -> None:
        self._pump = None
        if self._master is None or not self._out:
            return
        self._master.write(bytes(self._out[:1]))
        del self._out[:1]
        if self._out:
            self._pump = self.reactor.callLater(self.faults.byte_gap, self._write_one)

    def _later(self, delay: float, function: Callable[..., Any], *args: Any) -> None:
        self._calls = [call for call in self._calls if call.active()]
        self._calls.append(self.reactor.callLater(delay, function, *args))

    def _event(self, event: Event) -> None:
        if isinstance(event, Received):
            self.requests.append(event.payload)
            if self.record_path:
                with open(self.record_path, "ab") as file:
                    file.write(event.payload + b"\n")
            self._respond(event.payload)
        elif isinstance(event, (SendFailed, ReceiveFailed)):
            self._log.info("Simulated serial terminal: {code}: {message}", code=event.code, message=event.message)

    def _respond(self, payload: bytes) -> None:
        script = self.script
        if script.disconnect:
            self._log.info("Simulated serial terminal: request received, vanishing")
            self._later(script.delay, self._vanish_by_script)
            return
        answer = self.answer_to(payload)
        if answer is None:
            self._log.info("Simulated serial terminal: request received, staying silent")
            return
        self._later(script.delay, self._send_answer, answer)

    def _vanish_by_script(self) -> None:
        self.vanish()
        if self.reappear_after is not None:
            self.reactor.callLater(self.reappear_after, self._reappear)

    def _reappear(self) -> None:
        if self._master is None:
            self.open()

    def _send_answer(self, answer: bytes) -> None:
        if self._runner is None:
            return
        try:
            self._runner.send(answer)
        except RuntimeError:
            self._log.warn("Simulated serial terminal: still sending the previous answer; this one is dropped")

    def answer_to(self, payload: bytes) -> Optional[bytes]:
        """The payload this terminal answers to request ``payload``, or None when it stays silent."""
        script = self.script
        if script.outcome == NEVER:
            return None
        if script.garbage:
            return GARBAGE
        number = f"{100000 + len(self.requests):06d}"
        if self.protocol == PROTOCOL_V2:
            return self._v2_answer(payload, number)
        try:
            request = parse_message(payload)
        except MalformedAnswer:
            return encode_fields([("CZ", "0300"), ("AE", "01"), ("AF", "09")])
        fields = answer_fields(request, script, number, self.currencies)
        return None if fields is None else encode_fields(fields)

    def _v2_answer(self, payload: bytes, number: str) -> bytes:
        script = self.script
        try:
            request = concert_v2.decode_request(payload)
        except MalformedAnswer:
            return concert_v2.encode_answer("01", concert_v2.STATUS_REFUSED, 0, concert_v2.MODE_CARD, "978")
        status = _V2_STATUS.get(script.outcome, concert_v2.STATUS_REFUSED)
        if request.currency not in self.currencies:
            status = concert_v2.STATUS_REFUSED
        refused = status != concert_v2.STATUS_ACCEPTED
        amount = 0 if refused and script.zeros_when_refused else request.amount
        mode = concert_v2.MODE_CHEQUE if script.cheque else request.mode
        report = None
        if request.answer_flag == concert_v2.ANSWER_WITH_REPORT:
            report = "4970100000001234".ljust(concert_v2.REPORT_SIZE, "0")
        return concert_v2.encode_answer(request.pos_number, status, amount, mode, request.currency,
                                        number.rjust(10, "0"), report)
