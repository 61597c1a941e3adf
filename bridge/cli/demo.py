"""`terminal-bridge demo` (what `make run` starts): a bridge with simulated terminals, ready to pay."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from typing import Any, Optional

from twisted.internet.endpoints import TCP4ServerEndpoint

from bridge.cli.common import write_private_json
from bridge.config import ConfigError, add_client, load
from bridge.service.reactor import global_reactor
from bridge.terminals.caisse_ap.simulator import SimulatorFactory, SimulatorScript

#: The simulated terminals: name -> (script, what it shows off).
DEMO_TERMINALS = {
    "demo": (SimulatorScript(outcome="approve", delay=2.0), "approves after 2 seconds"),
    "demo-declines": (SimulatorScript(outcome="decline", af="04", delay=1.0), "declines (card refused)"),
    "demo-abandons": (SimulatorScript(outcome="abandon", delay=1.0), "the customer cancels"),
}


#: The simulated Stripe reader, served by a local fake of Stripe's API (never Stripe itself).
STRIPE_TERMINAL, STRIPE_SERIAL, STRIPE_PORT_OFFSET = "demo-stripe", "SIM-0001", 10


def write_demo_config(directory: str, port: int, terminal_port: int) -> str:
    """Write bridge.conf under ``directory`` (again at every start, so the ports are the ones asked for) and the
    simulated Stripe reader's test key; return the config path.  The state and the clients stay."""
    os.makedirs(directory, mode=0o750, exist_ok=True)
    config_path = os.path.join(directory, "bridge.conf")
    lines = ["# terminal-bridge demo configuration, written by `terminal-bridge demo` at every start.",
             "[bridge]", "name = demo-bridge", f"listen = 127.0.0.1:{port}", "state_dir = state",
             "clients_file = clients.conf", ""]
    for offset, name in enumerate(DEMO_TERMINALS):
        lines += [f"[terminal:{name}]", "type = caisse-ap-tcp", f"address = 127.0.0.1:{terminal_port + offset}",
                  "answer_timeout = 60", ""]
    key_file = os.path.join(directory, "stripe-test-key")
    if not os.path.exists(key_file):
        with open(key_file, "w", encoding="utf-8") as f:
            f.write("sk_test_demo\n")
        os.chmod(key_file, 0o600)
    lines += [f"[terminal:{STRIPE_TERMINAL}]", "type = stripe", f"serial_number = {STRIPE_SERIAL}",
              f"api_base = http://127.0.0.1:{terminal_port + STRIPE_PORT_OFFSET}", "api_key_file = stripe-test-key",
              ""]
    with open(config_path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    return config_path


def _demo_credentials(path: str, config: Any) -> Optional[dict[str, Any]]:
    """The demo client's credentials file, if it exists and its client is still in the clients file."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or config.client_by_id(data.get("client_id")) is None:
        return None
    return data


def run_demo(args: argparse.Namespace) -> int:
    reactor = global_reactor()

    from bridge.api.signing import new_secret
    from bridge.api.tls import ensure_certificate, fingerprint_of_pem
    from bridge.service.daemon import Daemon
    from bridge.service.run import start_logging
    from bridge.terminals.catalogue import VALIDATORS

    directory = os.path.abspath(args.dir)
    failures: list[str] = []
    config_path = write_demo_config(directory, args.port, args.terminal_port)
    credentials_path = os.path.join(directory, "client.json")
    try:
        config = load(config_path, VALIDATORS)
    except ConfigError as e:
        print("The demo configuration has problems:\n" + str(e), file=sys.stderr)
        return 78
    ensure_certificate(config.tls_certificate, config.tls_key, hostname="localhost")
    with open(config.tls_certificate, "rb") as f:
        fingerprint = fingerprint_of_pem(f.read())
    credentials = _demo_credentials(credentials_path, config)
    if credentials is None:
        client_id, secret_in, secret_out = "cl_demo_" + os.urandom(4).hex(), new_secret(), new_secret()
        add_client(config.clients_file, f"demo-{client_id[-8:]}", client_id, secret_in, secret_out,
                   ("pay", "read", "refund", "resolve"))
        credentials = {"client_id": client_id, "secret_in": secret_in, "secret_out": secret_out,
                       "algorithm": "sha256"}
        config = load(config_path, VALIDATORS)
    credentials.update(url=f"wss://127.0.0.1:{args.port}", fingerprint=fingerprint)
    write_private_json(credentials_path, credentials)

    ports = [args.port] + [args.terminal_port + offset for offset in range(len(DEMO_TERMINALS))]
    ports.append(args.terminal_port + STRIPE_PORT_OFFSET)
    busy = [port for port in ports if not _can_listen(port)]
    if busy:
        print(f"Port(s) {', '.join(map(str, busy))} of 127.0.0.1 already in use.", file=sys.stderr)
        print(_other_ports(args), file=sys.stderr, flush=True)
        return 1

    start_logging("info")
    for name, terminal in config.terminals.items():
        if terminal.type != "caisse-ap-tcp":
            continue
        script = DEMO_TERMINALS.get(name, (SimulatorScript(), ""))[0]
        host, _, port = terminal.options["address"].rpartition(":")
        endpoint = TCP4ServerEndpoint(reactor, int(port), interface=host)
        endpoint.listen(SimulatorFactory(reactor, script)).addErrback(
            lambda f, n=name: _fail(reactor, failures,
                                    f"The simulated terminal {n} cannot listen: {f.getErrorMessage()}"))

    if STRIPE_TERMINAL in config.terminals:
        from bridge.terminals.stripe.fake import FakeStripe

        fake = FakeStripe(reactor)
        location = fake.add_location("Demo shop")
        reader = fake.add_reader(STRIPE_SERIAL, label="Demo reader", location=location["id"])
        knobs = fake.reader_knobs(reader["id"])
        knobs.auto_present, knobs.auto_present_delay = "4242424242424242", 2.0
        fake_port = args.terminal_port + STRIPE_PORT_OFFSET
        started = fake.listen(reactor, f"tcp:{fake_port}:interface=127.0.0.1")
        started.addErrback(lambda f: _fail(reactor, failures,
                                           f"The fake Stripe API cannot listen: {f.getErrorMessage()}"))

    daemon = Daemon(config, reactor)
    # Whole paths, so the command works from any folder, as the banner suggests.
    program = os.path.join(os.path.dirname(sys.executable), "terminal-bridge")
    if not os.path.exists(program):
        program = "terminal-bridge"
    command = shlex.join([program, "pay", "--credentials", credentials_path, "--terminal", "demo", "--amount",
                          "12.34", "--currency", "EUR"])

    def ready(port: Any) -> None:
        if failures:  # a simulator could not listen: the demo is already stopping
            return
        print("\n" + "=" * 78, flush=True)
        print(f"terminal-bridge demo is running on wss://127.0.0.1:{args.port}", flush=True)
        print(f"Certificate fingerprint (SHA-256): {fingerprint}", flush=True)
        print("Simulated Caisse-AP terminals:", flush=True)
        for name, (script, what) in DEMO_TERMINALS.items():
            print(f"  {name:15} {what}", flush=True)
        print(f"Simulated Stripe reader (a local fake of Stripe's API):\n  {STRIPE_TERMINAL:15} a test card is "
              "presented after 2 seconds", flush=True)
        print("\nMake a test payment from another terminal window:\n", flush=True)
        print(f"  {command}\n", flush=True)
        print("Use --terminal demo-declines, demo-abandons or demo-stripe for the others. Ctrl-C stops the demo.",
              flush=True)
        print("=" * 78 + "\n", flush=True)

    reactor.addSystemEventTrigger("before", "shutdown", daemon.stop)
    daemon.start().addCallbacks(
        ready, lambda f: _fail(reactor, failures, f"The bridge cannot start: {f.getErrorMessage()}"))
    reactor.run()  # stops at once after a failure to start: the shutdown closes what did start
    if failures:
        print(_other_ports(args), file=sys.stderr, flush=True)
        return 1
    return 0


def _can_listen(port: int) -> bool:
    """Whether 127.0.0.1:port is free to listen on (as Twisted listens: SO_REUSEADDR)."""
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _other_ports(args: argparse.Namespace) -> str:
    return (f"The demo did not start. Another demo may be running: stop it (Ctrl-C in its window), or choose "
            f"other ports: make run PORT={args.port + 1} TERMINAL_PORT={args.terminal_port + 100} (or "
            f"terminal-bridge demo --port {args.port + 1} --terminal-port {args.terminal_port + 100}).")


def _fail(reactor: Any, failures: list[str], message: str) -> None:
    """Say what went wrong while starting (a port already in use) and stop: the demo then exits with status 1."""
    failures.append(message)
    print(message, file=sys.stderr, flush=True)
    if reactor.running:
        reactor.stop()
    else:
        reactor.callWhenRunning(reactor.stop)
