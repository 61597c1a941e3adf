"""The uplink's HTTPS client: nothing it started outlives its close (an uplink stopped mid-request)."""

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from bridge.uplink.https import HTTPS, TLSPolicy


class _Silent(Protocol):
    """Accepts the connection and never answers: the TLS handshake, and so the request, hangs."""


class CloseTests(TestCase):
    timeout = 20

    @inlineCallbacks
    def test_close_cancels_a_request_in_flight_and_leaves_no_timer_behind(self):
        port = reactor.listenTCP(0, Factory.forProtocol(_Silent), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        https = HTTPS(reactor, TLSPolicy(), timeout=30)
        pending = https.request("GET", f"https://127.0.0.1:{port.getHost().port}/web/login?db=shop")
        yield https.close()
        with self.assertRaises(CancelledError):
            yield pending
        # trial fails this test if the request's 30 s timeout or its connection were left in the reactor
