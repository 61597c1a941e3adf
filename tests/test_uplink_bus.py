"""The bus wake-up link: reconnect policy by close code (pure), and the link's life with a Clock."""

import json
import os

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from bridge.errors import BridgeError
from bridge.uplink import bus
from bridge.uplink.bus import (SILENCE_LIMIT, BusLink, LastIdStore, after_close, backoff, parse_notifications,
                               session_cookie, subscribe_frame)
from bridge.uplink.config import UplinkConfig

MID = lambda: 0.5  # noqa: E731  - jitter in the middle of its range
LOW = lambda: 0.0  # noqa: E731
HIGH = lambda: 0.999  # noqa: E731


class ClosePolicyTests(SynchronousTestCase):
    def test_4002_after_a_healthy_link_reconnects_at_once_with_the_same_cookie(self):
        d = after_close(4002, "", opened=True, lived=3600, failures=0, rand=MID)
        self.assertEqual((d.delay, d.renew_cookie, d.failures, d.error), (0.0, False, 0, None))

    def test_4001_fetches_a_new_cookie_first(self):
        d = after_close(4001, "", opened=True, lived=600, failures=3, rand=MID)
        self.assertEqual((d.delay, d.renew_cookie, d.failures), (0.0, True, 0))

    def test_4001_right_after_opening_backs_off_rather_than_loop(self):
        d = after_close(4001, "", opened=True, lived=1, failures=2, rand=MID)
        self.assertTrue(d.renew_cookie)
        self.assertGreaterEqual(d.delay, 1.0)
        self.assertEqual(d.failures, 3)

    def test_1001_waits_one_to_ten_seconds(self):
        delays = [after_close(1001, "", True, 100, 0, rand=r).delay for r in (LOW, MID, HIGH)]
        self.assertEqual(delays[0], 1.0)
        self.assertTrue(all(1.0 <= x <= 10.0 for x in delays))
        self.assertGreater(delays[2], 9.9)

    def test_1013_backs_off_at_least_thirty_seconds(self):
        for failures in (0, 1, 5, 50):
            d = after_close(1013, "", True, 100, failures, rand=LOW)
            self.assertGreaterEqual(d.delay, 30.0)
            self.assertLessEqual(d.delay, 60.0)
            self.assertIn("try later", d.error)

    def test_outdated_version_is_a_configuration_error_not_a_loop(self):
        d = after_close(1000, "OUTDATED_VERSION", True, 0.5, 0, rand=MID)
        self.assertEqual(d.delay, 60.0)
        self.assertIn("configuration error", d.error)

    def test_a_handshake_answered_404_backs_off_and_renews_the_cookie(self):
        reason = 'connection was closed uncleanly ("WebSocket connection upgrade failed [404]: Not Found")'
        d = after_close(None, reason, opened=False, lived=0, failures=0, rand=MID)
        self.assertTrue(d.renew_cookie)
        self.assertEqual(d.failures, 1)
        self.assertIn("404", d.error)

    def test_odoo_without_a_websocket_route_is_told_what_to_fix(self):
        for reason in ('connection was closed uncleanly ("Unsupported HTTP version "HTTP/1.0"")',
                       'connection was closed uncleanly ("WebSocket connection upgrade failed [500]: Internal")'):
            d = after_close(None, reason, opened=False, lived=0, failures=0, rand=MID)
            self.assertIn("route /websocket to Odoo's gevent port (8072) in the reverse proxy", d.error)
            self.assertIn("threaded Odoo (--workers=0) serves it on its HTTP port", d.error)

    def test_a_proxy_answering_for_a_restarting_odoo_is_not_a_database_problem(self):
        reason = 'connection was closed uncleanly ("WebSocket connection upgrade failed [502]: Bad Gateway")'
        d = after_close(None, reason, opened=False, lived=0, failures=0, rand=MID)
        self.assertEqual(d.error, "Odoo is not reachable behind its proxy (502): it may be restarting")

    def test_4001_right_after_an_outage_reconnects_at_once(self):
        # the link had failed handshakes before this opening; a quick 4001 is the first of its kind
        d = after_close(4001, "", opened=True, lived=1, failures=0, rand=MID)
        self.assertEqual((d.delay, d.renew_cookie), (0.0, True))

    def test_other_failed_handshakes_keep_the_cookie(self):
        for reason in ('connection was closed uncleanly ("WebSocket connection upgrade failed [503]: Service '
                       'Unavailable")', "https://odoo/websocket refused the connection"):
            d = after_close(None, reason, opened=False, lived=0, failures=0, rand=MID)
            self.assertFalse(d.renew_cookie)

    def test_backoff_grows_from_one_to_sixty_seconds_and_stays_there(self):
        delays = [backoff(n, MID) for n in range(1, 30)]
        self.assertEqual(delays[0], 1.0)
        self.assertEqual(delays, sorted(delays))
        self.assertEqual(delays[-1], 60.0)
        for n in range(1, 30):
            for r in (LOW, HIGH):
                self.assertTrue(1.0 <= backoff(n, r) <= 60.0)

    def test_a_dropped_link_after_a_short_life_counts_as_a_failure(self):
        d = after_close(1006, "dropped", opened=True, lived=2, failures=4, rand=MID)
        self.assertEqual(d.failures, 5)
        self.assertGreater(d.delay, 1.0)


class FramesTests(SynchronousTestCase):
    def test_subscribe_frame(self):
        self.assertEqual(json.loads(subscribe_frame("terminal_bridge-x", 4711)),
                         {"event_name": "subscribe",
                          "data": {"channels": ["terminal_bridge-x"], "last": 4711, "check_outdated": False}})

    def test_notifications_in_any_order_and_junk_skipped(self):
        payload = json.dumps([{"id": 9, "message": {"type": "terminal_bridge/command", "payload": {}}},
                              {"id": 7, "message": {"type": "bundle_changed", "payload": {}}},
                              {"id": "x"}, 5, {"id": True}]).encode()
        self.assertEqual(parse_notifications(payload), [(9, "terminal_bridge/command"), (7, "bundle_changed")])
        self.assertEqual(parse_notifications(b"{not json"), [])
        self.assertEqual(parse_notifications(b'{"id": 3}'), [])

    def test_session_cookie_from_set_cookie_headers(self):
        self.assertEqual(session_cookie(["frontend_lang=en_US; Path=/",
                                         "session_id=abc123; Expires=Wed; HttpOnly; Path=/"]), "abc123")
        self.assertIsNone(session_cookie(["session_id=; Path=/"]))
        self.assertIsNone(session_cookie([]))

    def test_last_id_survives_a_restart_and_never_goes_back(self):
        path = os.path.join(self.mktemp(), "bus.json")
        store = LastIdStore(path)
        self.assertEqual(store.last, 0)
        store.save(12)
        store.save(7)  # an older notification arriving late
        self.assertEqual(LastIdStore(path).last, 12)


UPLINK = UplinkConfig(name="odoo", client="odoo", url="https://odoo.example.com", database="shop",
                      channel_token="t" * 24, feedback_secret="f" * 20)


class FakeResponse:
    def __init__(self, code, cookie):
        self.code = code
        self._cookie = cookie

    def header(self, name):
        return [f"session_id={self._cookie}; Path=/"] if self._cookie else []


class FakeHTTPS:
    def __init__(self):
        self.logins = 0
        self.fail = False

    def request(self, method, url, *args, **kwargs):
        self.logins += 1
        if self.fail:
            from twisted.internet.defer import fail

            from bridge.errors import BridgeError
            return fail(BridgeError("uplink_unreachable", "no answer from Odoo in time"))
        return succeed(FakeResponse(303, f"sid{self.logins}"))


class FakeProto:
    STATE_OPEN = 3

    def __init__(self):
        self.state = self.STATE_OPEN
        self.sent = []
        self.closes = []
        self.dropped = False

    def sendMessage(self, payload):
        self.sent.append(payload)

    def sendClose(self, code=None, reason=None):
        self.closes.append(code)

    def dropConnection(self, abort=False):
        self.dropped = True


class BusLinkTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.https = FakeHTTPS()
        self.connects = []
        self.wakeups = 0
        self.states = []
        self.store = LastIdStore(os.path.join(self.mktemp(), "bus.json"))
        self.link = BusLink(UPLINK, reactor=self.clock, https=self.https, store=self.store, on_wakeup=self._wake,
                            on_state=lambda up, error: self.states.append((up, error)),
                            connect=self._connect, rand=MID)

    def _wake(self):
        self.wakeups += 1

    def _connect(self, factory):
        d = Deferred()
        self.connects.append((factory, d))
        return d

    def open(self):
        factory, d = self.connects[-1]
        proto = FakeProto()
        factory.link._proto = proto  # what buildProtocol does
        d.callback(proto)
        factory.link._opened(proto)
        return proto

    def close(self, proto, code, reason=""):
        self.link._closed(proto, code, reason)

    def test_opening_sends_one_subscribe_with_the_last_id_and_fetches(self):
        self.store.save(41)
        self.link.start()
        factory, _ = self.connects[0]
        self.assertEqual(factory.headers["Cookie"], "session_id=sid1")
        self.assertEqual(factory.origin, "https://odoo.example.com")
        self.assertEqual(factory.url, "wss://odoo.example.com/websocket")
        self.assertFalse(factory.useragent.startswith("Mozilla"))
        proto = self.open()
        self.assertEqual([json.loads(p)["data"]["last"] for p in proto.sent], [41])
        self.assertEqual(self.wakeups, 1)
        self.assertEqual(self.states, [(True, None)])

    def test_only_wake_up_notifications_fetch_and_every_id_is_kept(self):
        self.link.start()
        proto = self.open()
        self.link._message(json.dumps([{"id": 5, "message": {"type": "bundle_changed"}}]).encode())
        self.assertEqual(self.wakeups, 1)
        self.link._message(json.dumps([{"id": 8, "message": {"type": "terminal_bridge/command"}},
                                       {"id": 6, "message": {"type": "terminal_bridge/command"}}]).encode())
        self.assertEqual(self.wakeups, 2)
        self.assertEqual(self.store.last, 8)
        self.assertEqual(len(proto.sent), 1)  # nothing but the subscribe: no chatter against the rate limit

    def test_4002_reconnects_at_once_4001_with_a_new_cookie(self):
        self.link.start()
        proto = self.open()
        self.clock.advance(3600)
        self.close(proto, 4002)
        self.assertEqual(len(self.connects), 1)
        self.clock.advance(0)
        self.assertEqual(len(self.connects), 2)
        self.assertEqual(self.connects[1][0].headers["Cookie"], "session_id=sid1")
        proto = self.open()
        self.clock.advance(600)
        self.close(proto, 4001)
        self.clock.advance(0)
        self.assertEqual(len(self.connects), 3)
        self.assertEqual(self.connects[2][0].headers["Cookie"], "session_id=sid2")

    def test_a_4001_soon_after_an_outage_reconnects_at_once_with_a_new_cookie(self):
        self.link.start()
        proto = self.open()
        self.clock.advance(600)
        self.close(proto, 1006, "connection lost")  # Odoo down for a while: eight failed handshakes
        for _ in range(8):
            self.clock.advance(61)
            self.connects[-1][1].errback(Exception("refused"))
        self.assertGreaterEqual(self.link.failures, 8)
        self.clock.advance(61)
        proto = self.open()  # Odoo is back
        self.clock.advance(1)
        self.close(proto, 4001)  # ... and ended the session it lost while down
        logins = self.https.logins
        self.clock.advance(0)
        self.assertEqual(self.https.logins, logins + 1)
        self.assertEqual(self.connects[-1][0].headers["Cookie"], f"session_id=sid{logins + 1}")

    def test_1013_waits_thirty_seconds(self):
        self.link.start()
        proto = self.open()
        self.clock.advance(100)
        self.close(proto, 1013)
        self.clock.advance(29.9)
        self.assertEqual(len(self.connects), 1)
        self.clock.advance(31)
        self.assertEqual(len(self.connects), 2)
        self.assertIn("try later", self.states[-1][1])

    def test_a_link_silent_for_90_seconds_is_dropped_and_traffic_keeps_it(self):
        self.link.start()
        proto = self.open()
        for _ in range(5):
            self.clock.advance(SILENCE_LIMIT - 1)
            self.link._frame(proto)  # a pong or a server ping
        self.assertFalse(proto.dropped)
        self.clock.advance(SILENCE_LIMIT)
        self.assertTrue(proto.dropped)

    def test_connect_failures_back_off_forever_up_to_a_minute(self):
        self.https.fail = True
        self.link.start()
        times = []
        for _ in range(20):
            before = self.https.logins
            self.clock.advance(61)
            times.append(self.https.logins - before)
        self.assertEqual(times, [1] * 20)  # one attempt per minute at most, none skipped
        self.assertIn("no answer from Odoo", self.states[-1][1])
        self.assertEqual(self.link.state, bus.WAITING)

    def test_the_delays_between_failed_attempts_grow(self):
        self.https.fail = True
        self.link.start()
        attempts = []
        for second in range(1, 40):
            self.clock.advance(1)
            attempts.append(self.https.logins)
        starts = [i + 1 for i in range(1, len(attempts)) if attempts[i] != attempts[i - 1]]
        gaps = [b - a for a, b in zip(starts, starts[1:])]
        self.assertEqual(gaps, sorted(gaps))
        self.assertGreater(gaps[-1], gaps[0])

    def test_stop_closes_the_link_and_no_reconnect_follows(self):
        self.link.start()
        proto = self.open()
        stopped = self.link.stop()
        self.assertEqual(proto.closes, [1000])
        self.assertNoResult(stopped)
        self.close(proto, 1000)
        self.successResultOf(stopped)
        self.clock.advance(120)
        self.assertEqual(len(self.connects), 1)

    def test_stop_while_waiting_cancels_the_next_attempt(self):
        self.link.start()
        proto = self.open()
        self.close(proto, 1006, "dropped")
        self.successResultOf(self.link.stop())
        self.clock.advance(120)
        self.assertEqual(len(self.connects), 1)


class LoginWords(SynchronousTestCase):
    def test_a_proxy_502_at_login_says_odoo_may_be_restarting_not_check_the_database(self):
        from bridge.uplink.odoo_session import OdooSession

        class Proxy:
            def request(self, method, url, *args, **kwargs):
                return succeed(FakeResponse(502, None))

        failure = self.failureResultOf(OdooSession(UPLINK, Proxy()).get(), BridgeError)
        self.assertEqual(failure.value.message, "Odoo is not reachable behind its proxy (502): it may be restarting")
