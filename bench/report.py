"""The report ``make bench`` prints: the machine, the table of figures with each target's PASS or MISS (stated
against the floor this run measures), the notes under it, the status page phase, the memory over a
libraries-only process and the journal check."""

from __future__ import annotations

import math
from typing import Any, Callable

from common import TERMINALS
from placement import cpu_list
from status_phase import STATUS_PAGE_INTERVAL, STATUS_SCRAPE_INTERVAL


#: key -> (target text, check(value, figures)) for the figures that have a target (issue 18's, stated against the
#: floor this run measures: ``floor_ms``, see report()).  Values are in ms, payments/s, s.  Resident memory's
#: target is against the libraries-only process of the same run (printed after the table, see memory_report()).
TARGETS: dict[str, tuple[str, Callable[[float, dict[str, Any]], bool]]] = {
    "added_p50_1": ("<= floor + 1.0 ms", lambda v, r: v <= r["floor_ms"] + 1.0),
    "added_p99_1": ("<= floor + 2.5 ms", lambda v, r: v <= r["floor_ms"] + 2.5),
    "added_p99_50": ("<= 50 ms", lambda v, r: v <= 50.0),
    "throughput": (">= 300/s", lambda v, r: v >= 300.0),
    "ready_first": ("<= 1 s", lambda v, r: v <= 1.0),
    "ready_second": ("<= 1 s", lambda v, r: v <= 1.0),
}


def report(info: dict[str, Any], r: dict[str, Any], quick: bool) -> str:
    out = []
    out.append(f"terminal-bridge benchmark ({'quick smoke run: figures not meaningful' if quick else 'full run'})")
    out.append(f"machine: {info['nproc']} CPU(s) usable ({info['cpus']} online), {info['cpu']}, "
               f"{info['memory_mib']} MiB RAM, Linux {info['kernel']}")
    out.append(f"software: Python {info['python']}, Twisted {info['twisted']}, autobahn {info['autobahn']}, "
               f"cryptography {info.get('cryptography', '?')}, {info['openssl']}, SQLite {info['sqlite']}")
    out.append(f"journal disk: {info['filesystem']}; before the bridge starts, 4 KiB written in place + fdatasync "
               f"(a journal's write at its cheapest, the floor's): p50 {info['probe_p50_ms']:.3f} ms, p99 "
               f"{info['probe_p99_ms']:.3f} ms; 4 KiB appended + fsync: p50 {info['fsync_p50_ms']:.3f} ms, "
               f"p99 {info['fsync_p99_ms']:.3f} ms")
    out.append(f"CPUs: {info['placement']}" + (f" (the bridge kept to CPU {cpu_list(r['bridge_cpus'])})"
                                                 if r.get("bridge_cpus") else ""))
    n = TERMINALS if "direct_p50_50" in r else None
    rows: list[tuple[str, str, str]] = []
    # the floor of the 1-terminal added latency (issue 18's): a bare TLS WebSocket round trip and 3 ordered fsyncs,
    # both sampled between the 1-terminal payments (measurement.py); for comparison, the floor as measured until
    # the twelfth session: the echo phase's round trip and an appended block's fsync, both measured apart
    r["floor_apart_ms"] = r["echo_p50"] + 3 * info["fsync_p50_ms"]
    r["floor_ms"] = floor = r["floor_echo_p50_1"] + 3 * r["floor_fsync_p50_1"]

    def ms(key: str) -> str:
        return f"{r[key]:.3f} ms"

    for suffix, what in (("1", "1 terminal"), (str(n), f"{n} terminals at once")):
        count = r.get(f"bridge_n_{suffix}", 0)
        rows.append((f"{what}: direct round trip p50", ms(f"direct_p50_{suffix}"), f"n={count}"))
        rows.append((f"{what}: direct round trip p99", ms(f"direct_p99_{suffix}"), ""))
        rows.append((f"{what}: through the bridge p50", ms(f"bridge_p50_{suffix}"), f"n={count}"))
        rows.append((f"{what}: through the bridge p99", ms(f"bridge_p99_{suffix}"), ""))
        rows.append((f"{what}: added latency p50", ms(f"added_p50_{suffix}"), f"added_p50_{suffix}"))
        rows.append((f"{what}: added latency p99", ms(f"added_p99_{suffix}"), f"added_p99_{suffix}"))
    rows.append(("floor: bare TLS WebSocket round trip p50", ms("floor_echo_p50_1"),
                 f"n={r.get('bridge_n_1', 0)}"))
    rows.append(("floor: fsync of the journal's disk p50", ms("floor_fsync_p50_1"), ""))
    rows.append(("floor of the 1-terminal added latency (p50)", ms("floor_ms"), ""))
    rows.append(("floor measured apart (echo phase, append+fsync)", ms("floor_apart_ms"), ""))
    rows.append(("throughput: payments per second", f"{r['throughput']:.0f}/s", "throughput"))
    rows.append(("bridge resident memory after load", f"{r['rss'] / 1e6:.1f} MB", "rss"))
    rows.append(("bridge resident memory when ready", f"{r['rss_ready'] / 1e6:.1f} MB", ""))
    rows.append(("start to ready, first start (new TLS key)", f"{r['ready_first']:.3f} s", "ready_first"))
    rows.append(("start to ready, second start", f"{r['ready_second']:.3f} s", "ready_second"))
    rows.append(("start to first TCP accept, first start", f"{r['accept_first']:.3f} s", ""))
    rows.append(("start to first TCP accept, second start", f"{r['accept_second']:.3f} s", ""))

    width = max(len(label) for label, _, _ in rows) + 2
    out.append("")
    out.append(f"{'figure':<{width}}{'value':>12}  {'target':<18} result")
    for label, value, key in rows:
        if key in TARGETS:
            target, check = TARGETS[key]
            verdict = "PASS" if check(r[key], r) else "MISS"
            out.append(f"{label:<{width}}{value:>12}  {target:<18} {verdict}")
        else:
            note = key if key.startswith("n=") else ""
            out.append(f"{label:<{width}}{value:>12}  {'':<18} {note}".rstrip())
    out.append("")
    out.append(f"under the throughput load ({r['throughput_payments']} payments in {r['throughput_seconds']:.1f} s): "
               f"payment round trip p50 {r['throughput_p50']:.1f} ms, p99 {r['throughput_p99']:.1f} ms; "
               f"CPU (100 % = one core): bridge {r['cpu_bridge_pct']:.0f} %, measuring client "
               f"{r['cpu_client_pct']:.0f} %, simulators {r['cpu_sim_pct']:.0f} %")
    out.append(f"floor of the 1-terminal added latency on this machine: issue 18's, a bare TLS WebSocket round "
               f"trip ({r['echo_bytes']} bytes, autobahn, nothing else) p50 {r['floor_echo_p50_1']:.3f} ms + 3 "
               f"journal fsyncs (a payment's three states, each journaled before told; 4 KiB written in place + "
               f"fdatasync) p50 3 x {r['floor_fsync_p50_1']:.3f} ms = {floor:.3f} ms, both sampled between the "
               f"1-terminal payments, one of each after each payment (the bridge's own work is the rest: "
               f"{r['added_p50_1'] - floor:.3f} ms at p50, target 1.0 ms; {r['added_p99_1'] - floor:.3f} ms at "
               f"p99, target 2.5 ms); a Caisse-AP TCP payment waits for 2 fsyncs, its accepted and in_progress "
               f"being written together: against a floor of 2 its own work is "
               f"{r['added_p50_1'] - floor + r['floor_fsync_p50_1']:.3f} ms at p50, "
               f"{r['added_p99_1'] - floor + r['floor_fsync_p50_1']:.3f} ms at p99; measured apart as until the "
               f"twelfth session (an echo phase of {r['echo_n']} round trips, p50 {r['echo_p50']:.3f} ms, p99 "
               f"{r['echo_p99']:.3f} ms, and 4 KiB appended + fsync before the bridge started) the floor is "
               f"{r['floor_apart_ms']:.3f} ms and the own work {r['added_p50_1'] - r['floor_apart_ms']:.3f} ms at "
               f"p50, {r['added_p99_1'] - r['floor_apart_ms']:.3f} ms at p99; the echo server's CPU "
               f"per round trip (one message in, one out): {r['echo_server_cpu_ms']:.3f} ms")
    out.append(f"bridge CPU per payment: {r['bridge_cpu_ms_per_payment_1']:.2f} ms one at a time, "
               f"{r['bridge_cpu_ms_per_payment']:.2f} ms under load; peak resident memory "
               f"{r['rss_peak'] / 1e6:.1f} MB (after the load: {r['rss_anon'] / 1e6:.1f} MB heap, "
               f"{(r['rss'] - r['rss_anon']) / 1e6:.1f} MB code and libraries); stop after SIGTERM {r.get('stop_seconds', math.nan):.3f} s")
    other = r.get("other_cpu_pct", 0.0)
    out.append(f"the rest of the machine while measuring ({r.get('measure_seconds', 0):.0f} s): other processes "
               f"{other:.0f} % of a core, stolen by the hypervisor {r.get('steal_pct', 0):.0f} %, load average "
               f"before {r.get('load_before', 0):.2f}" + ("  <- NOT IDLE: figures are pessimistic" if other > 10 or
                                                             r.get("steal_pct", 0) > 10 else ""))
    out.append("latency percentiles are nearest-rank over each path's own samples; added = bridge - direct at the "
               "same percentile. MB = 10^6 bytes.")
    return "\n".join(out)


def status_report(r: dict[str, Any]) -> str:
    return "\n".join([
        "",
        f"status page (a third start, [status] on; blocking client, compare these with each other): payment round "
        f"trip on 1 terminal, page closed p50 {r['status_closed_p50']:.3f} ms, p99 {r['status_closed_p99']:.3f} ms "
        f"(n={r['status_closed_n']}); page open and refreshing p50 {r['status_open_p50']:.3f} ms, p99 "
        f"{r['status_open_p99']:.3f} ms (n={r['status_open_n']})",
        f"status page open: {r['status_pages']} refreshes (every {STATUS_PAGE_INTERVAL:g} s, fetch p50 "
        f"{r['status_page_p50']:.1f} ms) and {r['status_scrapes']} /metrics scrapes (every "
        f"{STATUS_SCRAPE_INTERVAL:g} s, p50 {r['status_scrape_p50']:.1f} ms) during the payments; bridge CPU "
        f"{r['status_closed_cpu_pct']:.0f} % page closed, {r['status_open_cpu_pct']:.0f} % page open (about "
        f"{r['status_cpu_ms_per_fetch']:.1f} ms of bridge CPU per refresh or scrape); resident "
        f"memory with [status] on {r['status_rss_ready'] / 1e6:.1f} MB when ready, {r['status_rss'] / 1e6:.1f} MB "
        f"after",
    ])


def memory_report(r: dict[str, Any]) -> str:
    """The bridge's memory after the load over the libraries-only process of the same run (bench/baseline.py),
    against its target."""
    over = (r["rss"] - r["rss_libraries"]) / 1e6
    return (f"bridge resident memory after the load over a libraries-only process measured in this run "
            f"({r['libraries_modules']} modules imported, nothing run): {r['rss'] / 1e6:.1f} - "
            f"{r['rss_libraries'] / 1e6:.1f} = {over:.1f} MB  (target <= 10 MB) {'PASS' if over <= 10 else 'MISS'}"
            + (f"; the bridge ran with the systemd unit's environment: "
               f"{' '.join(f'{k}={v}' for k, v in sorted(r['unit_environment'].items()))}"
               if r.get("unit_environment") else
               "; no systemd unit file beside bench/: the bridge ran without the unit's environment"
               if r.get("unit_environment", {}) is None else ""))


def journal_report(bridge_payments: int, problems: int) -> str:
    return (f"journal check: {bridge_payments} payments sent through the bridge, {bridge_payments} journaled "
            f"approved; log events at warn level or above in the bridge's log: {problems}")
