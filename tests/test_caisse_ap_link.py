"""The Concert link layer: every transition and fault of the pure state machine, and byte streams cut anywhere."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.terminals.caisse_ap import link
from bridge.terminals.caisse_ap.link import (
    ACK,
    ENQ,
    EOT,
    ETX,
    NAK,
    STX,
    AnswerTimeout,
    ConcertLink,
    Delivered,
    PingResult,
    Received,
    ReceiveFailed,
    SendFailed,
    Write,
    encode_frame,
    lrc,
)

REQUEST = b"CZ0040300CJ012012345678901CA00201CE003978CD0010CB0041234"
ANSWER = b"CZ0040300CA00201CE003978CD0010CB0041234AE00210"
B_ENQ, B_ACK, B_NAK, B_EOT = bytes([ENQ]), bytes([ACK]), bytes([NAK]), bytes([EOT])


def writes(events) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, Write))


def others(events) -> list:
    return [e for e in events if not isinstance(e, Write)]


def sent_frame(payload: bytes) -> ConcertLink:
    """A link that has sent ENQ, had it acknowledged and written ``payload``'s frame, at t=0."""
    pos = ConcertLink()
    pos.send(payload, 0.0, answer_timeout=60.0)
    pos.receive(B_ACK, 0.0)
    return pos


def accepted_session() -> ConcertLink:
    """A link that acknowledged the peer's ENQ at t=0."""
    term = ConcertLink()
    assert term.receive(B_ENQ, 0.0) == [Write(B_ACK)]
    return term


# --- frames -------------------------------------------------------------------------------------------------

def test_lrc_of_the_concert_v2_example_from_pytelium_is_01():
    body = b"0100001250110978" + b" " * 10 + b"A010B010" + bytes([ETX])
    assert lrc(body) == 0x01
    assert encode_frame(body[:-1])[-1] == 0x01


def test_lrc_of_the_tlv_example_from_the_notes_is_12():
    assert encode_frame(REQUEST) == bytes([STX]) + REQUEST + bytes([ETX, 0x12])


@pytest.mark.parametrize("payload", [b"", b"AB\x03CD", b"\x02", "é".encode(), b"x" * (link.MAX_FRAME + 1)])
def test_payload_that_cannot_travel_in_a_frame_is_refused(payload):
    with pytest.raises(ValueError):
        encode_frame(payload)
    with pytest.raises(ValueError):
        ConcertLink().send(payload, 0.0)


def test_corrupt_frame_has_a_wrong_lrc_only():
    good, bad = encode_frame(REQUEST), encode_frame(REQUEST, corrupt=True)
    assert good[:-1] == bad[:-1] and good[-1] != bad[-1]


# --- sending ------------------------------------------------------------------------------------------------

def test_send_opens_with_enq_and_waits_for_ack():
    pos = ConcertLink(ack_timeout=2.0)
    assert pos.send(REQUEST, 10.0) == [Write(B_ENQ)]
    assert (pos.state, pos.deadline, pos.frame_sent) == (link.WAIT_ENQ_ACK, 12.0, False)


def test_ack_to_enq_sends_the_frame():
    pos = ConcertLink()
    pos.send(REQUEST, 0.0)
    assert pos.receive(B_ACK, 1.0) == [Write(encode_frame(REQUEST))]
    assert (pos.state, pos.deadline, pos.frame_sent) == (link.WAIT_FRAME_ACK, 4.0, True)


def test_ack_to_frame_closes_with_eot_and_starts_the_answer_wait():
    pos = sent_frame(REQUEST)
    assert pos.receive(B_ACK, 2.0) == [Write(B_EOT), Delivered(1)]
    assert (pos.state, pos.deadline, pos.awaiting_answer) == (link.IDLE, 62.0, True)


def test_without_answer_timeout_nothing_is_timed_after_delivery():
    pos = ConcertLink()
    pos.send(REQUEST, 0.0)
    pos.receive(B_ACK, 0.0)
    pos.receive(B_ACK, 0.0)
    assert (pos.deadline, pos.idle) == (None, True)


def test_unanswered_enq_is_closed_paused_and_tried_again_then_given_up():
    pos = ConcertLink(ack_timeout=1.0, retry_delay=0.5, enq_attempts=3)
    pos.send(REQUEST, 0.0)
    assert pos.tick(0.99) == []  # not yet
    assert pos.tick(1.0) == [Write(B_EOT)]
    assert (pos.state, pos.deadline) == (link.ENQ_PAUSE, 1.5)
    assert pos.tick(1.5) == [Write(B_ENQ)]
    assert pos.tick(2.5) == [Write(B_EOT)]
    assert pos.tick(3.0) == [Write(B_ENQ)]
    events = pos.tick(4.0)
    assert writes(events) == B_EOT
    [failed] = others(events)
    assert isinstance(failed, SendFailed)
    assert (failed.code, failed.frame_sent) == ("no_answer_to_enq", False)
    assert "3 tries" in failed.message and "switched on" in failed.message
    assert pos.idle and not pos.frame_sent


def test_nak_to_enq_counts_as_an_unanswered_try():
    pos = ConcertLink(enq_attempts=2, retry_delay=1.0)
    pos.send(REQUEST, 0.0)
    assert pos.receive(B_NAK, 0.5) == [Write(B_EOT)]
    assert (pos.state, pos.deadline) == (link.ENQ_PAUSE, 1.5)
    pos.tick(1.5)
    events = pos.receive(B_NAK, 2.0)
    assert [type(e) for e in events] == [Write, SendFailed]


def test_ack_after_a_retried_enq_sends_the_frame():
    pos = ConcertLink(ack_timeout=1.0, retry_delay=1.0)
    pos.send(REQUEST, 0.0)
    pos.tick(1.0)
    pos.tick(2.0)
    assert pos.receive(B_ACK, 2.5) == [Write(encode_frame(REQUEST))]


def test_bytes_during_the_enq_pause_are_ignored():
    pos = ConcertLink()
    pos.send(REQUEST, 0.0)
    pos.tick(3.0)
    assert pos.receive(B_ACK + B_ENQ + b"xyz", 3.1) == []
    assert pos.state == link.ENQ_PAUSE


def test_nak_to_frame_resends_it_then_ack_delivers():
    pos = sent_frame(REQUEST)
    assert pos.receive(B_NAK, 1.0) == [Write(encode_frame(REQUEST))]
    assert pos.deadline == 4.0  # a fresh wait for the new copy
    assert pos.receive(B_ACK, 1.5) == [Write(B_EOT), Delivered(2)]


def test_frame_refused_four_times_is_given_up_with_clear_words():
    pos = sent_frame(REQUEST)
    for _ in range(3):
        assert pos.receive(B_NAK, 1.0) == [Write(encode_frame(REQUEST))]
    events = pos.receive(B_NAK, 1.0)
    assert writes(events) == B_EOT
    [failed] = others(events)
    assert (failed.code, failed.frame_sent) == ("frame_rejected", True)
    assert "4 times" in failed.message and "7E1 or 8N1" in failed.message
    assert pos.idle and not pos.awaiting_answer


def test_missing_ack_to_frame_is_a_timeout_with_the_frame_possibly_read():
    pos = sent_frame(REQUEST)
    events = pos.tick(3.0)
    assert writes(events) == B_EOT
    [failed] = others(events)
    assert (failed.code, failed.frame_sent) == ("no_ack", True)
    assert "did not confirm" in failed.message and "3 s" in failed.message
    assert pos.idle and pos.frame_sent


def test_noise_while_waiting_for_ack_is_ignored_and_does_not_extend_the_wait():
    pos = sent_frame(REQUEST)
    assert pos.receive(b"\x00\xffhello" + bytes([STX, ETX, ENQ, EOT]), 2.0) == []
    assert (pos.state, pos.deadline) == (link.WAIT_FRAME_ACK, 3.0)
    assert pos.receive(B_ACK, 2.5)[-1] == Delivered(1)


def test_a_second_send_while_sending_is_a_programming_error():
    pos = ConcertLink()
    pos.send(REQUEST, 0.0)
    with pytest.raises(RuntimeError):
        pos.send(REQUEST, 0.0)


def test_a_new_send_replaces_an_awaited_answer():
    pos = sent_frame(REQUEST)
    pos.receive(B_ACK, 0.0)
    assert pos.awaiting_answer
    pos.send(REQUEST, 1.0)
    assert not pos.awaiting_answer and not pos.frame_sent


# --- answer wait --------------------------------------------------------------------------------------------

def test_no_answer_in_time_is_an_answer_timeout():
    pos = sent_frame(REQUEST)
    pos.receive(B_ACK, 0.0)
    assert pos.tick(59.9) == []
    assert pos.tick(60.0) == [AnswerTimeout()]
    assert (pos.deadline, pos.awaiting_answer) == (None, False)


def test_noise_while_waiting_for_the_answer_is_ignored():
    pos = sent_frame(REQUEST)
    pos.receive(B_ACK, 0.0)
    assert pos.receive(b"\x00junk" + bytes([STX, ETX, ACK, NAK, EOT]), 5.0) == []
    assert pos.deadline == 60.0


def test_answer_received_ends_the_wait():
    pos = sent_frame(REQUEST)
    pos.receive(B_ACK, 0.0)
    events = pos.receive(B_ENQ + encode_frame(ANSWER) + B_EOT, 30.0)
    assert writes(events) == B_ACK + B_ACK
    assert others(events) == [Received(ANSWER)]
    assert (pos.deadline, pos.awaiting_answer) == (None, False)


def test_answer_deadline_waits_for_a_session_in_progress():
    pos = sent_frame(REQUEST)
    pos.receive(B_ACK, 0.0)
    pos.receive(B_ENQ + bytes([STX]) + b"CZ004", 59.0)
    assert pos.deadline == 62.0  # the peer's byte timeout, not the answer deadline
    assert pos.receive(ANSWER[5:] + bytes([ETX]), 60.5) == []
    check = encode_frame(ANSWER)[-1:]
    assert pos.receive(check + B_EOT, 61.0)[-1] == Received(ANSWER)


def test_answer_deadline_passed_during_an_empty_session_fires_after_it():
    pos = sent_frame(REQUEST)
    pos.receive(B_ACK, 0.0)
    pos.receive(B_ENQ, 59.0)  # the peer only pings
    assert pos.receive(B_EOT, 61.0) == []
    assert pos.deadline == 60.0
    assert pos.tick(61.0) == [AnswerTimeout()]


# --- receiving ----------------------------------------------------------------------------------------------

def test_enq_is_acknowledged_and_a_frame_is_expected():
    term = ConcertLink(byte_timeout=2.0)
    assert term.receive(B_ENQ, 5.0) == [Write(B_ACK)]
    assert (term.state, term.deadline) == (link.RECV_WAIT_STX, 7.0)


def test_good_frame_is_acknowledged_and_delivered_at_eot():
    term = accepted_session()
    assert term.receive(encode_frame(REQUEST), 0.5) == [Write(B_ACK)]
    assert term.state == link.RECV_WAIT_EOT
    assert term.receive(B_EOT, 0.6) == [Received(REQUEST)]
    assert term.idle


def test_bad_lrc_is_refused_with_nak_and_a_good_copy_is_taken():
    term = accepted_session()
    assert term.receive(encode_frame(REQUEST, corrupt=True), 0.5) == [Write(B_NAK)]
    assert term.state == link.RECV_WAIT_STX
    assert term.receive(encode_frame(REQUEST), 0.6) == [Write(B_ACK)]
    assert term.receive(B_EOT, 0.7) == [Received(REQUEST)]


def test_only_bad_copies_then_eot_is_a_receive_failure():
    term = accepted_session()
    for _ in range(4):
        assert term.receive(encode_frame(REQUEST, corrupt=True), 0.5) == [Write(B_NAK)]
    [failed] = term.receive(B_EOT, 0.6)
    assert isinstance(failed, ReceiveFailed) and failed.code == "bad_frame"
    assert "4 time(s)" in failed.message
    assert term.idle


def test_control_byte_inside_the_body_spoils_the_frame():
    term = accepted_session()
    frame = bytes([STX]) + b"AB\x01CD" + bytes([ETX])
    frame += bytes([lrc(b"AB\x01CD" + bytes([ETX]))])
    assert term.receive(frame, 0.1) == [Write(B_NAK)]


def test_empty_frame_is_refused():
    term = accepted_session()
    assert term.receive(bytes([STX, ETX, ETX]), 0.1) == [Write(B_NAK)]


def test_frame_too_long_is_refused():
    term = ConcertLink(max_frame=8)
    term.receive(B_ENQ, 0.0)
    assert term.receive(bytes([STX]) + b"123456789", 0.1) == [Write(B_NAK)]
    assert term.state == link.RECV_WAIT_STX


def test_peer_silent_after_our_ack_ends_the_session_quietly():
    term = accepted_session()
    assert term.tick(3.0) == []
    assert term.idle


def test_peer_silent_mid_frame_is_a_receive_timeout():
    term = accepted_session()
    term.receive(bytes([STX]) + b"CZ00", 1.0)
    assert term.deadline == 4.0
    [failed] = term.tick(4.0)
    assert failed.code == "receive_timeout"
    assert term.idle


def test_peer_silent_before_lrc_is_a_receive_timeout():
    term = accepted_session()
    term.receive(bytes([STX]) + REQUEST + bytes([ETX]), 1.0)
    assert term.state == link.RECV_LRC
    assert term.tick(4.0)[0].code == "receive_timeout"


def test_slow_bytes_are_accepted_while_each_gap_is_short():
    term = ConcertLink(byte_timeout=1.0)
    term.receive(B_ENQ, 0.0)
    now, events = 0.0, []
    for byte in encode_frame(REQUEST):
        now += 0.9
        assert term.tick(now) == []
        events += term.receive(bytes([byte]), now)
    assert now > 50 * term.byte_timeout
    assert events == [Write(B_ACK)]


def test_missing_eot_after_a_good_frame_still_delivers_it():
    term = accepted_session()
    term.receive(encode_frame(REQUEST), 0.5)
    assert term.tick(3.5) == [Received(REQUEST)]
    assert term.idle


def test_repeated_frame_after_a_lost_ack_is_acknowledged_and_delivered_once():
    term = accepted_session()
    term.receive(encode_frame(REQUEST), 0.5)
    assert term.receive(encode_frame(REQUEST), 1.0) == [Write(B_ACK)]
    assert term.receive(B_EOT, 1.1) == [Received(REQUEST)]


def test_repeated_enq_after_a_lost_ack_is_acknowledged_again():
    term = accepted_session()
    assert term.receive(B_ENQ, 2.0) == [Write(B_ACK)]
    assert term.deadline == 5.0


def test_new_enq_instead_of_eot_delivers_and_opens_the_next_session():
    term = accepted_session()
    term.receive(encode_frame(REQUEST), 0.5)
    assert term.receive(B_ENQ, 1.0) == [Received(REQUEST), Write(B_ACK)]
    assert term.state == link.RECV_WAIT_STX


def test_eot_mid_frame_is_an_aborted_session():
    term = accepted_session()
    [failed] = term.receive(bytes([STX]) + b"CZ0" + B_EOT, 0.5)
    assert failed.code == "session_aborted"
    assert term.idle


def test_stx_mid_frame_restarts_the_frame():
    term = accepted_session()
    term.receive(bytes([STX]) + b"line noise", 0.5)
    assert term.receive(encode_frame(REQUEST) + B_EOT, 0.6) == [Write(B_ACK), Received(REQUEST)]


def test_noise_before_the_frame_and_while_idle_is_ignored():
    term = ConcertLink()
    assert term.receive(b"\x00\xff\x7fnoise" + bytes([STX]) + b"AB" + bytes([ETX, ACK, NAK, EOT]), 0.0) == []
    assert term.idle
    term.receive(B_ENQ, 0.0)
    assert term.receive(b"\x00garbage\xff" + encode_frame(REQUEST) + B_EOT, 0.1) == [Write(B_ACK), Received(REQUEST)]


# --- ping ---------------------------------------------------------------------------------------------------

def test_ping_answered_with_ack_is_alive():
    pos = ConcertLink()
    assert pos.ping(0.0) == [Write(B_ENQ)]
    assert pos.receive(B_ACK, 0.1) == [Write(B_EOT), PingResult(True)]
    assert pos.idle


def test_ping_answered_with_nak_is_alive_but_busy():
    pos = ConcertLink()
    pos.ping(0.0)
    assert pos.receive(B_NAK, 0.1) == [Write(B_EOT), PingResult(True)]


def test_ping_unanswered_is_not_alive_and_not_retried():
    pos = ConcertLink(ack_timeout=1.0)
    pos.ping(0.0)
    assert pos.tick(1.0) == [Write(B_EOT), PingResult(False)]
    assert pos.idle and pos.deadline is None


def test_ping_only_when_idle():
    pos = ConcertLink()
    pos.send(REQUEST, 0.0)
    with pytest.raises(RuntimeError):
        pos.ping(0.0)


def test_send_during_a_ping_waits_for_it():
    pos = ConcertLink()
    pos.ping(0.0)
    assert pos.send(REQUEST, 0.1) == []
    assert not pos.idle
    assert pos.receive(B_ACK, 0.2) == [Write(B_EOT), PingResult(True), Write(B_ENQ)]
    assert pos.state == link.WAIT_ENQ_ACK


def test_send_during_a_peer_session_waits_for_its_end():
    pos = accepted_session()
    assert pos.send(REQUEST, 0.1, answer_timeout=10.0) == []
    with pytest.raises(RuntimeError):
        pos.send(REQUEST, 0.1)
    events = pos.receive(encode_frame(ANSWER) + B_EOT, 0.2)
    assert events == [Write(B_ACK), Received(ANSWER), Write(B_ENQ)]
    assert pos.receive(B_ACK, 0.3) == [Write(encode_frame(REQUEST))]


# --- fault injection (the simulator's side) -----------------------------------------------------------------

def test_nak_frames_refuses_good_frames_first():
    term = ConcertLink(nak_frames=2)
    term.receive(B_ENQ, 0.0)
    assert term.receive(encode_frame(REQUEST), 0.1) == [Write(B_NAK)]
    assert term.receive(encode_frame(REQUEST), 0.2) == [Write(B_NAK)]
    assert term.receive(encode_frame(REQUEST), 0.3) == [Write(B_ACK)]


def test_ack_frames_false_swallows_frames():
    term = ConcertLink(ack_frames=False)
    term.receive(B_ENQ, 0.0)
    assert term.receive(encode_frame(REQUEST), 0.1) == []
    [event] = term.receive(B_EOT, 3.2)
    assert isinstance(event, ReceiveFailed)


def test_corrupt_frames_spoils_the_first_copies_sent():
    term = ConcertLink(corrupt_frames=1)
    term.send(ANSWER, 0.0)
    assert term.receive(B_ACK, 0.1) == [Write(encode_frame(ANSWER, corrupt=True))]
    assert term.receive(B_NAK, 0.2) == [Write(encode_frame(ANSWER))]


# --- two ends talking, with the byte streams cut anywhere ------------------------------------------------------

def converse(pos: ConcertLink, term: ConcertLink, first: list, cut, noise: bytes = b""):
    """Carry writes between two links until both are quiet (time stands still); returns each side's events.

    ``cut(data)`` splits every write into the pieces the reader sees; ``noise`` is put on the line to the POS
    whenever the terminal's link is idle (between sessions).
    """
    pos_events, term_events = list(first), []
    to_term = writes(first)
    to_pos = b""
    for _ in range(100):
        if not to_term and not to_pos:
            break
        fed_term, to_term = to_term, b""
        for piece in cut(fed_term):
            events = term.receive(piece, 0.0)
            term_events += events
            to_pos += writes(events)
        fed_pos, to_pos = to_pos, b""
        if term.idle and noise and pos.state == link.IDLE:
            fed_pos = noise + fed_pos
        for piece in cut(fed_pos):
            events = pos.receive(piece, 0.0)
            pos_events += events
            to_term += writes(events)
    return others(pos_events), others(term_events)


def whole(data: bytes) -> list[bytes]:
    return [data] if data else []


def test_full_exchange_between_two_links():
    pos, term = ConcertLink(), ConcertLink()
    pos_events, term_events = converse(pos, term, pos.send(REQUEST, 0.0, answer_timeout=60.0), whole)
    assert pos_events == [Delivered(1)]
    assert term_events == [Received(REQUEST)]
    term_events2, pos_events2 = converse(term, pos, term.send(ANSWER, 0.0), whole)
    assert term_events2 == [Delivered(1)]
    assert pos_events2 == [Received(ANSWER)]
    assert pos.idle and term.idle and not pos.awaiting_answer


def test_full_exchange_over_a_line_that_garbles_the_first_copies():
    pos, term = ConcertLink(corrupt_frames=2), ConcertLink(nak_frames=1)
    pos_events, term_events = converse(pos, term, pos.send(REQUEST, 0.0), whole)
    assert pos_events == [Delivered(4)]
    assert term_events == [Received(REQUEST)]


payloads = st.binary(min_size=1, max_size=300).map(lambda b: bytes(0x20 + x % 0x5F for x in b))
noise_bytes = st.binary(max_size=20).map(lambda b: bytes(x for x in b if x not in (ENQ, STX, EOT, ACK, NAK)))


def splitter(cuts: list[int]):
    def cut(data: bytes) -> list[bytes]:
        points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
        return [data[a:b] for a, b in zip(points, points[1:]) if b > a]
    return cut


@settings(max_examples=60)
@given(request=payloads, answer=payloads, cuts=st.lists(st.integers(0, 400), max_size=12), noise=noise_bytes)
def test_exchange_is_the_same_however_the_streams_are_cut(request, answer, cuts, noise):
    pos, term = ConcertLink(), ConcertLink()
    cut = splitter(cuts)
    pos_events, term_events = converse(pos, term, pos.send(request, 0.0, answer_timeout=60.0), cut, noise)
    assert (pos_events, term_events) == ([Delivered(1)], [Received(request)])
    term_events, pos_events = converse(term, pos, term.send(answer, 0.0), cut, noise)
    assert (term_events, pos_events) == ([Delivered(1)], [Received(answer)])


@settings(max_examples=60)
@given(payload=payloads, cuts=st.lists(st.integers(0, 400), max_size=20), noise=noise_bytes,
       corrupt=st.integers(0, 3))
def test_receiver_events_do_not_depend_on_how_the_bytes_arrive(payload, cuts, noise, corrupt):
    stream = noise + B_ENQ + noise
    for _ in range(corrupt):
        stream += encode_frame(payload, corrupt=True) + noise
    stream += encode_frame(payload) + B_EOT + noise
    at_once = ConcertLink().receive(stream, 0.0)
    receiver, pieces = ConcertLink(), []
    for piece in splitter(cuts)(stream):
        pieces += receiver.receive(piece, 0.0)
    assert pieces == at_once
    assert others(at_once) == [Received(payload)]
    assert writes(at_once) == B_ACK + B_NAK * corrupt + B_ACK
