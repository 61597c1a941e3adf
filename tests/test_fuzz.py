"""The parsers of outside input under fuzzing (issue 13, item 3).

In ``make test``: hypothesis property tests, a bounded and fixed set of examples per parser (derandomized, so a
run is repeatable).  ``make fuzz`` runs ``python -m tests.test_fuzz --inputs 1000000``: the mutation fuzzer of
tests/test_fuzz_targets.py, a million inputs per parser, printing inputs tried and crashes.  docs/security.md has
the figures of the last long run.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import sys
import time
import traceback

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import test_fuzz_targets as fuzz_targets

BOUNDED = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                   suppress_health_check=list(HealthCheck))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
OPS = ["hello", "bridge.info", "terminal.list", "terminal.status", "payment.start", "payment.get", "payment.list",
       "payment.cancel", "payment.refund", "payment.resolve", "events.resume", "events.ack", "nope"]
ARG_NAMES = ["terminal", "amount", "currency", "kind", "method", "payment_id", "command_id", "limit", "cursor",
             "since", "until", "state", "outcome", "note", "authorisation", "after", "seq", "client", "tip"]


@pytest.fixture(scope="module")
def session():
    target = fuzz_targets.SessionTarget()
    yield target
    target.journal.close()


@BOUNDED
@given(data=st.binary(max_size=300))
def test_session_answers_any_bytes_with_a_documented_error(session, data):
    session(data)


@BOUNDED
@given(message_id=st.one_of(st.text(max_size=130), json_values), op=st.sampled_from(OPS),
       ts=st.one_of(st.just(fuzz_targets.NOW), json_values),
       args=st.dictionaries(st.sampled_from(ARG_NAMES), json_values, max_size=5), signed=st.booleans())
def test_session_answers_any_command_once_and_never_with_internal_error(session, message_id, op, ts, args, signed):
    data = json.dumps({"id": message_id, "op": op, "ts": ts, "args": args}).encode()
    session(session.sign(data) if signed else data)


@BOUNDED
@given(data=st.binary(max_size=400))
def test_caisse_ap_answer_parser_takes_any_bytes(data):
    fuzz_targets.caisse_ap_tlv(data)


@BOUNDED
@given(fields=st.lists(st.tuples(st.sampled_from(["CZ", "CA", "CB", "CD", "CE", "AE", "AF", "AA", "AC", "CJ", "ZZ"]),
                                 st.text(alphabet="0123456789ABCDEF#é ", max_size=30)), max_size=12))
def test_caisse_ap_well_framed_answers_with_any_fields_end_in_an_outcome(fields):
    data = b"".join(tag.encode() + f"{len(value.encode()):03d}".encode() + value.encode() for tag, value in fields)
    fuzz_targets.caisse_ap_tlv(data)


@BOUNDED
@given(data=st.lists(st.one_of(st.sampled_from([b"\x02", b"\x03", b"\x04", b"\x05", b"\x06", b"\x15"]),
                               st.binary(max_size=6)), max_size=60).map(b"".join))
def test_concert_link_takes_any_bytes_and_ends_idle(data):
    fuzz_targets.concert_link(data)


# -- crashes found by make fuzz, fixed: pinned here ----------------------------------------------------------

@pytest.mark.parametrize("answer", [{"action": 1.5}, {"action": {"type": "process_payment_intent",
                                                                  "process_payment_intent": "x"}},
                                    {"latest_charge": {"payment_method_details": 1}},
                                    {"last_payment_error": "EUR"}])
def test_stripe_answers_of_the_wrong_shape(answer):
    fuzz_targets.stripe(json.dumps(answer).encode())


@BOUNDED
@given(answer=st.dictionaries(st.sampled_from(["id", "status", "amount", "amount_received", "failure_reason",
                                                "payment_intent"]), st.none() | st.text(max_size=10) | st.integers()))
def test_stripe_answers_with_any_flat_values_are_read(answer):
    fuzz_targets.stripe(json.dumps(answer).encode())


def test_odoo_pending_nested_thousands_deep():
    fuzz_targets.odoo_pending(b"[" * 100_000 + b"]" * 100_000)


@BOUNDED
@given(body=st.one_of(st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode()),
                      st.lists(json_values, max_size=5).map(lambda c: json.dumps({"commands": c}).encode())))
def test_odoo_pending_answers_are_a_list_or_a_clear_error(body):
    fuzz_targets.odoo_pending(body)


# -- make fuzz --------------------------------------------------------------------------------------------------

def run(inputs: int, names: list[str], seed: int, out=sys.stdout) -> int:
    """Fuzz each target with ``inputs`` mutated inputs; print the figures; return the number of crashes."""
    available = fuzz_targets.targets()
    total = 0
    print(f"{'parser':<15} {'inputs':>10} {'crashes':>8} {'distinct':>8} {'seconds':>8} {'inputs/s':>9}", file=out)
    for name in names:
        target, seeds, sign = available[name]
        rnd = random.Random(f"{seed}:{name}")
        crashes: collections.Counter = collections.Counter()
        examples: dict[str, bytes] = {}
        started = time.monotonic()
        for count in range(inputs):
            data = seeds[count] if count < len(seeds) else fuzz_targets.mutate(rnd, seeds)
            if sign and rnd.random() < 0.5:
                data = target.sign(data)
            try:
                target(data)
            except Exception as error:  # noqa: BLE001 - every exception is a finding
                frame = traceback.extract_tb(error.__traceback__)[-1]
                key = f"{type(error).__name__} at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}"
                crashes[key] += 1
                examples.setdefault(key, data)
        seconds = time.monotonic() - started
        found = sum(crashes.values())
        total += found
        print(f"{name:<15} {inputs:>10} {found:>8} {len(crashes):>8} {seconds:>8.0f} {inputs / seconds:>9.0f}",
              file=out, flush=True)
        for key, count in crashes.most_common():
            print(f"    {count:>8} x {key}; e.g. {examples[key][:120]!r}", file=out, flush=True)
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.test_fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=1_000_000, help="inputs per parser (default 1000000)")
    parser.add_argument("--targets", default="session,caisse_ap_tlv,concert_link,stripe,odoo_pending")
    parser.add_argument("--seed", type=int, default=13)
    options = parser.parse_args(argv)
    crashes = run(options.inputs, options.targets.split(","), options.seed)
    print(f"total crashes: {crashes}")
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
