"""The status page phase (issue #16): payments with the status page closed, then open and refreshing."""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from typing import Any, Optional

from bridge_process import BridgeProcess
from clients import BlockingBridgeClient
from common import BENCH_SCRIPT, BenchError, percentile
from processes import child_env, free_port, set_parent_death_signal, stop_process
from sampling import proc_cpu_seconds, proc_status


# -- the status page phase (issue #16): payments with the page closed, then open and refreshing -------------
#
# A third start of the bridge, with its [status] section on: payments one after the other on terminal t0, in
# windows where nobody looks at the page and windows where another process (``--poll-status-page``, paused with
# SIGSTOP in between) keeps it open the way many browsers would, fetching its refreshing part every
# STATUS_PAGE_INTERVAL s and /metrics every STATUS_SCRAPE_INTERVAL s.  The measuring client is a blocking one
# (websocket-client) because the reactor of this process cannot be run twice; both kinds of window use it, so
# they compare with each other, not with the figures above.

#: As 20 browsers showing the page (each refreshes every 5 s), and a Prometheus scraping every second.
STATUS_PAGE_INTERVAL = 0.25
STATUS_SCRAPE_INTERVAL = 1.0
#: Closed and open windows, in turn, over --duration seconds each way.
STATUS_WINDOWS = 5
STATUS_PASSWORD = "bench status page password"


def poll_status_page(port: int) -> int:
    """``--poll-status-page PORT``: sign in, then fetch the page's refreshing part and /metrics until SIGTERM;
    print what it fetched and how long each took, as JSON."""
    import http.client
    import ssl
    import urllib.parse

    stop = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(True))
    context = ssl.create_default_context(cafile=os.environ["TB_BENCH_CAFILE"])
    context.check_hostname = False
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
    conn.request("POST", "/login", body=urllib.parse.urlencode({"password": STATUS_PASSWORD}),
                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    response = conn.getresponse()
    response.read()
    cookie = (response.getheader("Set-Cookie") or "").split(";", 1)[0]
    if response.status != 303 or not cookie:
        print(json.dumps({"error": f"sign-in answered {response.status}"}), flush=True)
        return 1
    print("signed in", flush=True)
    pages: list[float] = []
    scrapes: list[float] = []
    errors = 0
    next_page = next_scrape = time.perf_counter()
    while not stop:
        now = time.perf_counter()
        # after a pause (SIGSTOP: the page "closed"), start again at the normal pace rather than in a burst
        next_page = max(next_page, now - STATUS_PAGE_INTERVAL)
        next_scrape = max(next_scrape, now - STATUS_SCRAPE_INTERVAL)
        if now >= next_scrape:
            path, headers, samples = "/metrics", {"Authorization": "Bearer " + os.environ["TB_BENCH_TOKEN"]}, scrapes
            next_scrape += STATUS_SCRAPE_INTERVAL
        elif now >= next_page:
            path, headers, samples = "/fragment", {"Cookie": cookie}, pages
            next_page += STATUS_PAGE_INTERVAL
        else:
            time.sleep(min(next_page, next_scrape) - now)
            continue
        t0 = time.perf_counter()
        try:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                errors += 1
        except (OSError, http.client.HTTPException):
            if stop:
                break
            errors += 1
            conn.close()
            continue
        samples.append(time.perf_counter() - t0)
    conn.close()
    print(json.dumps({"pages": pages, "scrapes": scrapes, "errors": errors}), flush=True)
    return 0


def status_phase(args: argparse.Namespace, directory: str, config: str, port: int, client: dict[str, str],
                 bridges: list["BridgeProcess"]) -> tuple[dict[str, Any], int]:
    """Returns the figures and the number of payments made."""
    from bridge.status.auth import write_password_file

    # not the command port: the bridge is stopped between its starts, so that port is free now (the CI of c06005c
    # met it: the third start could not listen twice on it)
    status_port, token = free_port(port), uuid.uuid4().hex + uuid.uuid4().hex
    with open(config, "a", encoding="utf-8") as f:
        f.write(f"\n[status]\nlisten = 127.0.0.1:{status_port}\nmetrics_token = {token}\n")
    write_password_file(os.path.join(directory, "state", "status-page.password"), STATUS_PASSWORD)
    print("  .. status page: third start of the bridge, with [status] on", file=sys.stderr, flush=True)
    bridge = BridgeProcess(directory, config, port, "status")
    bridges.append(bridge)
    bridge.start()
    r: dict[str, Any] = {"status_rss_ready": proc_status(bridge.pid, "VmRSS")}
    cafile = os.path.join(directory, "state", "tls", "bridge.crt")
    payer = BlockingBridgeClient(f"wss://127.0.0.1:{port}", client, cafile)
    poller: Optional[subprocess.Popen] = None
    made = 0
    try:
        def window(seconds: float, samples: Optional[list[float]]) -> int:
            """Payments one after the other for ``seconds``; returns how many."""
            nonlocal made
            count, deadline = 0, time.perf_counter() + seconds
            while time.perf_counter() < deadline:
                elapsed, state = payer.pay("t0")
                made += 1
                count += 1
                if state != "approved":
                    raise BenchError(f"status page phase: a payment ended {state}")
                if samples is not None:
                    samples.append(elapsed * 1000)
            return count

        poller = subprocess.Popen([sys.executable, BENCH_SCRIPT, "--poll-status-page", str(status_port)],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
                                  env=child_env({"TB_BENCH_CAFILE": cafile, "TB_BENCH_TOKEN": token}),
                                  preexec_fn=set_parent_death_signal)
        assert poller.stdout is not None
        if poller.stdout.readline().strip() != "signed in":
            raise BenchError("status page phase: the poller could not sign in")
        poller.send_signal(signal.SIGSTOP)  # the page is closed until a window opens it
        for _ in range(args.warmup):
            payer.pay("t0")
            made += 1
        # Closed and open alternate in short windows, so that the rest of the machine's load falls on both alike.
        print(f"  .. status page closed, then open (refreshed every {STATUS_PAGE_INTERVAL:g} s, scraped every "
              f"{STATUS_SCRAPE_INTERVAL:g} s), in turn: {STATUS_WINDOWS} windows of {args.duration / STATUS_WINDOWS:g} "
              f"s each", file=sys.stderr, flush=True)
        samples: dict[str, list[float]] = {"closed": [], "open": []}
        cpu = {"closed": 0.0, "open": 0.0}
        seconds = {"closed": 0.0, "open": 0.0}
        counts = {"closed": 0, "open": 0}
        for _ in range(STATUS_WINDOWS):
            for key in ("closed", "open"):
                poller.send_signal(signal.SIGCONT if key == "open" else signal.SIGSTOP)
                cpu0, t0 = proc_cpu_seconds(bridge.pid), time.perf_counter()
                counts[key] += window(args.duration / STATUS_WINDOWS, samples[key])
                seconds[key] += time.perf_counter() - t0
                cpu[key] += proc_cpu_seconds(bridge.pid) - cpu0
        poller.send_signal(signal.SIGCONT)
        poller.send_signal(signal.SIGTERM)
        out, _ = poller.communicate(timeout=30)
        polled = json.loads(out.strip().splitlines()[-1])
        if polled.get("error") or polled["errors"]:
            raise BenchError(f"status page phase: the page did not answer every fetch: {polled.get('error')}"
                             f" ({polled.get('errors')} failed)")
        for key in ("closed", "open"):
            r[f"status_{key}_p50"] = percentile(samples[key], 50)
            r[f"status_{key}_p99"] = percentile(samples[key], 99)
            r[f"status_{key}_n"] = len(samples[key])
            r[f"status_{key}_cpu_pct"] = 100 * cpu[key] / seconds[key]
        r["status_pages"], r["status_scrapes"] = len(polled["pages"]), len(polled["scrapes"])
        # The bridge's CPU while open, less what as many payments cost while closed: the page's share (counted
        # in clock ticks of 10 ms: meaningful over a full run, not a quick one).
        page_cpu = cpu["open"] - counts["open"] * cpu["closed"] / max(1, counts["closed"])
        r["status_cpu_ms_per_fetch"] = 1000 * page_cpu / max(1, r["status_pages"] + r["status_scrapes"])
        r["status_page_p50"] = percentile([x * 1000 for x in polled["pages"]], 50) if polled["pages"] else math.nan
        r["status_scrape_p50"] = (percentile([x * 1000 for x in polled["scrapes"]], 50) if polled["scrapes"]
                                  else math.nan)
        r["status_rss"] = proc_status(bridge.pid, "VmRSS")
    finally:
        payer.close()
        stop_process(poller)
    if bridge.stop() is None:
        raise BenchError("the bridge with its status page did not stop within 15 s of SIGTERM")
    return r, made
