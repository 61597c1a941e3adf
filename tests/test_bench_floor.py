"""bench/machine.py's fsync probe, the floor's fsync (report.py): a journal write at its cheapest, measured in the
journal's directory between the 1-terminal payments.  What is checked is what it does to the file, not its
timing (a test machine's timings mean nothing)."""

import os
import sys
from unittest import mock

from twisted.trial.unittest import SynchronousTestCase

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import machine  # noqa: E402
import placement  # noqa: E402


class FsyncProbeTests(SynchronousTestCase):
    def setUp(self):
        self.directory = self.mktemp()
        os.makedirs(self.directory)

    def test_writes_in_place_into_blocks_already_on_disk_and_fdatasyncs(self):
        """Every sample overwrites a block of a file already its full size (no size change, so nothing but the
        data to flush), in turn, and flushes with fdatasync, not fsync."""
        probe = machine.FsyncProbe(self.directory)
        self.addCleanup(lambda: os.path.exists(probe.path) and probe.close())
        size = os.path.getsize(probe.path)
        self.assertEqual(size, machine.FsyncProbe.BLOCKS * 4096)
        written = []
        real_pwrite = os.pwrite

        def pwrite(fd, data, offset):
            written.append((len(data), offset))
            return real_pwrite(fd, data, offset)

        with mock.patch.object(machine.os, "pwrite", pwrite), \
                mock.patch.object(machine.os, "fdatasync", wraps=os.fdatasync) as fdatasync, \
                mock.patch.object(machine.os, "fsync", wraps=os.fsync) as fsync:
            samples = [probe.sample() for _ in range(machine.FsyncProbe.BLOCKS + 2)]
        self.assertTrue(all(s > 0 for s in samples))
        self.assertEqual(fdatasync.call_count, len(samples))
        self.assertEqual(fsync.call_count, 0)
        offsets = [offset for _, offset in written]
        self.assertEqual(offsets, [4096 * (i % machine.FsyncProbe.BLOCKS) for i in range(len(samples))])
        self.assertEqual({length for length, _ in written}, {4096})
        self.assertEqual(os.path.getsize(probe.path), size)
        probe.close()
        self.assertFalse(os.path.exists(probe.path))

    def test_probe_cost_leaves_nothing_behind(self):
        p50, p99 = machine._probe_cost(self.directory, count=5)
        self.assertGreater(p50, 0)
        self.assertGreaterEqual(p99, p50)
        self.assertEqual(os.listdir(self.directory), [])


class PlacementTests(SynchronousTestCase):
    def test_the_bridge_gets_the_last_cpu_and_the_harness_the_others(self):
        p = placement.plan({0, 1})
        self.assertEqual((p.bridge, p.harness, p.server), (1, frozenset({0}), frozenset({1})))
        p = placement.plan({2, 5, 7})
        self.assertEqual((p.bridge, p.harness, p.server), (7, frozenset({2, 5}), frozenset({7})))
        self.assertIn("CPU 7", p.describe())
        self.assertIn("CPU 2, 5", p.describe())

    def test_one_cpu_is_shared_by_all(self):
        p = placement.plan({3})
        self.assertEqual((p.bridge, p.harness, p.server), (None, frozenset({3}), frozenset({3})))
        self.assertIn("share", p.describe())

    def test_the_bridge_keeps_to_the_cpu_the_placement_gives_it(self):
        """The bridge's own choice ([bridge] cpu = auto: the last CPU it may use) is the placement's."""
        from bridge.config import CPU_AUTO
        from bridge.service.cpu import choose_cpu

        allowed = {0, 1, 2, 3}
        self.assertEqual(choose_cpu(CPU_AUTO, allowed)[0], placement.plan(allowed).bridge)


class ProbeCpuTests(SynchronousTestCase):
    def test_each_sample_flushes_from_the_cpus_given_and_comes_back(self):
        directory = self.mktemp()
        os.makedirs(directory)
        home = os.sched_getaffinity(0)
        target = frozenset({max(home)})
        seen = []
        real = os.fdatasync

        def fdatasync(fd):
            seen.append(os.sched_getaffinity(0))
            return real(fd)

        probe = machine.FsyncProbe(directory, target)
        try:
            with mock.patch.object(machine.os, "fdatasync", fdatasync):
                probe.sample()
                probe.sample()
        finally:
            probe.close()
        self.assertEqual(seen, [set(target), set(target)])
        self.assertEqual(os.sched_getaffinity(0), home)


class FreePortTests(SynchronousTestCase):
    def test_a_port_to_avoid_is_never_handed_out(self):
        """The status page's port is chosen while the bridge is stopped: its command port is free then."""
        from unittest import mock

        import processes

        handed = iter([5001, 5002])

        class Socket:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def bind(self, address):
                self.port = next(handed)

            def getsockname(self):
                return ("127.0.0.1", self.port)

        with mock.patch.object(processes.socket, "socket", Socket):
            self.assertEqual(processes.free_port(5001), 5002)
