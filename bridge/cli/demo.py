"""`terminal-bridge demo` (what `make run` starts): a bridge with simulated terminals, ready to pay."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Any

from twisted.internet.endpoints import TCP4ServerEndpoint

from bridge.config import ConfigError, add_client, load
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
    """Write bridge.conf, clients.conf and client.json under ``directory`` unless they exist; return the
    config path."""
    os.makedirs(directory, mode=0o750, exist_ok=True)
    config_path = os.path.join(directory, "bridge.conf")
    if not os.path.exists(config_path):
        lines = ["# terminal-bridge demo configuration, written by `terminal-bridge demo`.",
                 "[bridge]", "name = demo-bridge", f"listen = 127.0.0.1:{port}", "state_dir = state",
                 "clients_file = clients.conf", ""]
        for offset, name in enumerate(DEMO_TERMINALS):
            lines += [f"[terminal:{name}]", "type = caisse-ap-tcp", f"address = 127.0.0.1:{terminal_port + offset}",
                      "answer_timeout = 60", ""]
        key_file = os.path.join(directory, "stripe-test-key")
        with open(key_file, "w", encoding="utf-8") as f:
            f.write("sk_test_demo\n")
        os.chmod(key_file, 0o600)
        lines += [f"[terminal:{STRIPE_TERMINAL}]", "type = stripe", f"serial_number = {STRIPE_SERIAL}",
                  f"api_base = http://127.0.0.1:{terminal_port + STRIPE_PORT_OFFSET}", "api_key_file = stripe-test-key",
                  ""]
        with open(config_path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines))
    return config_path


def run_demo(args: argparse.Namespace) -> int:
    from twisted.internet import reactor

    from bridge.api.signing import new_secret
    from bridge.api.tls import ensure_certificate, fingerprint_of_pem
    from bridge.cli.commands import write_private_json
    from bridge.service.daemon import Daemon
    from bridge.service.run import start_logging
    from bridge.terminals.catalogue import VALIDATORS

    directory = os.path.abspath(args.dir)
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
    if not os.path.exists(credentials_path) or not config.clients:
        client_id, secret_in, secret_out = "cl_demo_" + os.urandom(4).hex(), new_secret(), new_secret()
        add_client(config.clients_file, f"demo-{client_id[-8:]}", client_id, secret_in, secret_out,
                   ("pay", "read", "resolve"))
        write_private_json(credentials_path, {"client_id": client_id, "secret_in": secret_in,
                                              "secret_out": secret_out, "algorithm": "sha256",
                                              "url": f"wss://127.0.0.1:{args.port}", "fingerprint": fingerprint})
        config = load(config_path, VALIDATORS)

    start_logging("info")
    for name, terminal in config.terminals.items():
        if terminal.type != "caisse-ap-tcp":
            continue
        script = DEMO_TERMINALS.get(name, (SimulatorScript(), ""))[0]
        host, _, port = terminal.options["address"].rpartition(":")
        endpoint = TCP4ServerEndpoint(reactor, int(port), interface=host)
        endpoint.listen(SimulatorFactory(reactor, script)).addErrback(
            lambda f, n=name: _fail(reactor, f"The simulated terminal {n} cannot listen: {f.getErrorMessage()}"))

    if STRIPE_TERMINAL in config.terminals:
        from bridge.terminals.stripe.fake import FakeStripe

        fake = FakeStripe(reactor)
        location = fake.add_location("Demo shop")
        reader = fake.add_reader(STRIPE_SERIAL, label="Demo reader", location=location["id"])
        knobs = fake.reader_knobs(reader["id"])
        knobs.auto_present, knobs.auto_present_delay = "4242424242424242", 2.0
        fake_port = args.terminal_port + STRIPE_PORT_OFFSET
        started = fake.listen(reactor, f"tcp:{fake_port}:interface=127.0.0.1")
        started.addErrback(lambda f: _fail(reactor, f"The fake Stripe API cannot listen: {f.getErrorMessage()}"))

    daemon = Daemon(config, reactor)
    program = shlex.quote(os.path.join(os.path.dirname(sys.executable), "terminal-bridge"))
    if not os.path.exists(os.path.join(os.path.dirname(sys.executable), "terminal-bridge")):
        program = "terminal-bridge"
    credentials = shlex.quote(os.path.relpath(credentials_path))

    def ready(port: Any) -> None:
        print("\n" + "=" * 78, flush=True)
        print(f"terminal-bridge demo is running on wss://127.0.0.1:{args.port}", flush=True)
        print(f"Certificate fingerprint (SHA-256): {fingerprint}", flush=True)
        print("Simulated Caisse-AP terminals:", flush=True)
        for name, (script, what) in DEMO_TERMINALS.items():
            print(f"  {name:15} {what}", flush=True)
        print(f"Simulated Stripe reader (a local fake of Stripe's API):\n  {STRIPE_TERMINAL:15} a test card is "
              "presented after 2 seconds", flush=True)
        print("\nMake a test payment from another terminal window:\n", flush=True)
        print(f"  {program} pay --credentials {credentials} --terminal demo --amount 12.34 --currency EUR\n",
              flush=True)
        print("Use --terminal demo-declines, demo-abandons or demo-stripe for the others. Ctrl-C stops the demo.",
              flush=True)
        print("=" * 78 + "\n", flush=True)
        reactor.addSystemEventTrigger("before", "shutdown", daemon.stop)

    daemon.start().addCallbacks(ready, lambda f: _fail(reactor, f"The bridge cannot start: {f.getErrorMessage()}"))
    reactor.run()
    return 0


def _fail(reactor: Any, message: str) -> None:
    print(message, file=sys.stderr, flush=True)
    if reactor.running:
        reactor.stop()
