"""The running bridge takes what it built at start out of the cyclic garbage collector's sight (gc.freeze), after
collecting the start's garbage, and does so before it says READY=1."""

import gc
import os
import weakref

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from bridge.service.run import settle_heap
from tests.support import start_daemon, start_simulator, write_config


class Node:
    pass


def test_settle_heap_collects_the_garbage_then_freezes_what_is_left():
    cycle = Node()
    cycle.self = cycle
    gone = weakref.ref(cycle)
    kept = Node()
    kept.self = kept
    del cycle
    try:
        settle_heap()
        assert gone() is None  # the start's cyclic garbage was collected, not frozen for ever
        assert gc.get_freeze_count() > 0
        before = gc.get_freeze_count()
        gc.collect()
        assert gc.get_freeze_count() == before  # a full collection leaves the frozen objects alone
    finally:
        gc.unfreeze()  # the test process is not the bridge: give its objects back to the collector
        del kept


class SettledBeforeReadyTests(TestCase):
    timeout = 20

    @inlineCallbacks
    def test_the_daemon_settles_its_heap_once_before_ready(self):
        _simulator, terminal = yield start_simulator(self, reactor)
        directory = self.mktemp()
        os.makedirs(directory)
        path = write_config(directory, {"till-1": terminal})
        said = []
        yield start_daemon(self, path, reactor, notify=lambda message: said.append(message) or True,
                           settle_heap=lambda: said.append("settled"))
        ready = [i for i, message in enumerate(said) if message.startswith("READY=1")]
        self.assertEqual(said.count("settled"), 1)
        self.assertEqual(len(ready), 1)
        self.assertLess(said.index("settled"), ready[0])
