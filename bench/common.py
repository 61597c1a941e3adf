"""What every part of the benchmark shares: where the project is (put on sys.path so that ``bridge``
imports), the number of terminals, the payment every terminal makes, the error that stops a run, and the
percentile every figure is read with.

``bench.py`` and the other scripts in bench/ run as scripts, so bench/ is ``sys.path[0]`` and these modules import
each other by their bare names.
"""

from __future__ import annotations

import math
import os
import sys


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

TERMINALS = 50
AMOUNT, CURRENCY = 1234, "EUR"


class BenchError(Exception):
    """The benchmark could not run, or what it measured cannot be trusted."""


def percentile(samples: list[float], p: float) -> float:
    """Nearest-rank percentile: the smallest sample with at least p % of the samples at or below it."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[rank - 1]


#: ``python bench/bench.py``: the entry point, run again as a child for ``--serve-simulators`` and
#: ``--poll-status-page``.
BENCH_SCRIPT = os.path.join(ROOT, "bench", "bench.py")
