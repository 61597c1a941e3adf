"""Keep the daemon's threads on one CPU (``[bridge] cpu``).

A payment's journal writes go from the reactor thread to the journal's writer thread and back: four hand-offs per
payment, each waking a sleeping thread and passing Python's GIL to it.  When the two threads sit on different
CPUs, every hand-off is a wake-up across CPUs (an inter-processor interrupt; on a virtual machine, an exit to the
hypervisor) and the GIL's state moves between the CPUs' caches.  On one CPU it is a plain switch.  The threads
cannot run Python at the same time anyway (the GIL), and while the writer waits for the disk the CPU is the
reactor's.  On the benchmark's machine this made a payment's own time in the bridge shorter and the bridge's
throughput higher (docs/performance.md).

``auto`` (the default) picks the last CPU the bridge may use: CPU 0 takes most device interrupts (on a Raspberry
Pi, all of them).  ``all`` leaves the choice to the kernel; a number picks that CPU.
"""

from __future__ import annotations

import os
from typing import Optional

from twisted.logger import Logger

from bridge.config import CPU_ALL, CPU_AUTO, CpuSetting

log = Logger()


def choose_cpu(setting: CpuSetting, allowed: set[int]) -> tuple[Optional[int], Optional[str]]:
    """The CPU to keep the threads on, among ``allowed`` (the ones the process may use), or None to leave them
    where they are; and why not, when a CPU was asked for that cannot be had."""
    if setting == CPU_ALL or len(allowed) < 2:
        return None, None
    if setting == CPU_AUTO:
        return max(allowed), None
    assert isinstance(setting, int)
    if setting not in allowed:
        return None, (f"CPU {setting} is not one this process may use ({_cpu_list(allowed)}); its threads run on "
                      f"any of those")
    return setting, None


def keep_on_one_cpu(setting: CpuSetting) -> Optional[int]:
    """Move every thread of this process to the CPU ``setting`` chooses; threads started later stay there too (a
    new thread takes its creator's CPUs).  Returns the CPU, or None when the threads were left where they are.
    Never fails: a CPU that cannot be had is logged and the bridge runs on as before."""
    try:
        allowed = os.sched_getaffinity(0)
    except (AttributeError, OSError):  # not Linux
        return None
    cpu, problem = choose_cpu(setting, allowed)
    if problem is not None:
        log.warn("[bridge] cpu: {problem}", problem=problem)
    if cpu is None:
        return None
    try:
        for task in os.listdir("/proc/self/task"):
            try:
                os.sched_setaffinity(int(task), {cpu})
            except ProcessLookupError:  # the thread ended since the listing: nothing to move
                pass
    except OSError as e:
        log.warn("Could not keep the bridge's threads on CPU {cpu}: {error}; they run on any of {cpus}", cpu=cpu,
                 error=e.strerror or str(e), cpus=_cpu_list(allowed))
        for task in os.listdir("/proc/self/task"):  # back as they were, whichever were moved
            try:
                os.sched_setaffinity(int(task), allowed)
            except OSError:
                pass
        return None
    log.info("The bridge's threads run on CPU {cpu} of {cpus} ([bridge] cpu = {setting})", cpu=cpu,
             cpus=_cpu_list(allowed), setting=setting)
    return cpu


def _cpu_list(cpus: set[int]) -> str:
    return ", ".join(str(c) for c in sorted(cpus))
