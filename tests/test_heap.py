"""The running bridge hands the heap's free memory back to the kernel every few seconds (glibc's malloc_trim)."""

import os

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from bridge.service import daemon as daemon_module
from bridge.service.heap import malloc_trim
from tests.support import start_daemon, start_simulator, write_config


def rss_anon() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon in /proc/self/status")


def test_malloc_trim_gives_freed_heap_memory_back_to_the_kernel():
    trim = malloc_trim()
    assert trim is not None  # Debian's C library is glibc
    # 40 MB in 4 KB blocks (malloc'd, below glibc's mmap threshold), one kept in 50: the freed ones sit between
    # kept ones, so free() alone cannot give them back (only the heap's top is returned by itself)
    blocks = [bytes(4000) + os.urandom(8) for _ in range(10_000)]
    kept = blocks[::50]
    del blocks
    before = rss_anon()
    trim()
    after = rss_anon()
    assert before - after > 20_000_000, (before, after)
    assert len(kept) == 200


class DaemonTrimsItsHeapTests(TestCase):
    timeout = 20

    @inlineCallbacks
    def test_the_daemon_trims_its_heap_while_it_runs_and_not_after(self):
        self.patch(daemon_module, "TRIM_INTERVAL", 0.05)
        _simulator, terminal = yield start_simulator(self, reactor)
        directory = self.mktemp()
        os.makedirs(directory)
        trims = []
        daemon, _url, _fingerprint = yield start_daemon(self, write_config(directory, {"till-1": terminal}),
                                                        reactor, trim_heap=lambda: trims.append(1))
        self.assertEqual(trims, [])  # not at once: the start's own heap is settled first
        yield deferLater(reactor, 0.3, lambda: None)
        self.assertGreaterEqual(len(trims), 3)
        yield daemon.stop(grace=5.0)
        stopped_at = len(trims)
        yield deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(len(trims), stopped_at)


def test_finding_malloc_trim_starts_no_program(monkeypatch):
    """The daemon looks malloc_trim up at every start: among the process's own symbols, without running
    ldconfig (which ctypes.util.find_library does)."""
    import subprocess

    def refused(*args, **kwargs):
        raise AssertionError(f"a program was started: {args!r}")

    monkeypatch.setattr(subprocess, "Popen", refused)
    assert malloc_trim() is not None
