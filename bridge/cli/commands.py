"""The sub-commands of `terminal-bridge`, each a small function taking the parsed arguments."""

from __future__ import annotations

import argparse
import configparser
import ipaddress
import os
import socket
import sys
import uuid
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from bridge.api.signing import new_secret
from bridge.cli import doctor, stripe as stripe_cli, uplink as uplink_cli
from bridge.cli.common import (EX_CONFIG, clients_file_and_state_dir, load_config, report_config_error,
                               usage_of, write_private_json)
from bridge.cli.pay import add_connection_arguments
from bridge.cli.payments import list_payments
from bridge.cli.simulators import add_serial_arguments, add_simulator_arguments
from bridge.config import (DEFAULT_PORT, DEFAULT_RIGHTS, DEFAULT_STATE_DIR, RIGHTS, ConfigError, _host_port, add_client,
                           load_clients)
from bridge.core.states import ALL_STATES
from bridge.service.reactor import global_reactor

__all__ = ["EX_CONFIG", "register", "write_private_json"]



def register(sub: argparse._SubParsersAction) -> None:
    formatter = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser("run", help="run the bridge in the foreground",
                       description="Run the bridge in the foreground until stopped (SIGTERM or Ctrl-C). Logs go "
                                   "to the journal under systemd, to standard output otherwise.")
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("check-config", help="check the configuration and name every problem",
                       description="Read the configuration and the clients file and report every problem with "
                                   "its file, section and key. Exit status 0 when all is well, 78 otherwise.")
    p.set_defaults(handler=cmd_check_config)

    doctor.register(sub)

    p = sub.add_parser("client", help="manage the clients allowed to send commands")
    client_sub = p.add_subparsers(dest="client_command", metavar="ACTION")
    add = client_sub.add_parser(
        "add", help="create a client and its secrets", formatter_class=formatter,
        description="Create a client: a random id, an inbound secret (the client signs its commands with it) and "
                    "an outbound secret (the bridge signs its replies with it). The secrets are printed once and "
                    "stored in the clients file with mode 0600. Reload the bridge (systemctl reload "
                    "terminal-bridge) to let the client in.")
    add.add_argument("name", help="a name for the client, e.g. pos-1 or odoo")
    add.add_argument("--rights", default=",".join(DEFAULT_RIGHTS),
                     help=f"comma-separated rights among {', '.join(RIGHTS)} (default: %(default)s)")
    add.add_argument("--algorithm", choices=("sha256", "sha512"), default="sha256",
                     help="HMAC hash for signatures (default: %(default)s)")
    add.add_argument("--write-credentials", metavar="FILE",
                     help="also write the client's credentials as JSON to FILE (mode 0600), for `pay`")
    add.add_argument("--url", help="the bridge's wss:// address to put into the credentials file (default: "
                                   "from `listen`, or this machine's address when it listens on all of them)")
    add.set_defaults(handler=cmd_client_add)
    again = client_sub.add_parser(
        "credentials", help="write a client's credentials file again (e.g. once the certificate exists)",
        description="Write the credentials file of an existing client again, with the bridge's address and the "
                    "fingerprint of its certificate: after the bridge's first start made the certificate, or after "
                    "the certificate or the address changed. The secrets are not printed.")
    again.add_argument("name", help="the client's name, as given to `client add`")
    again.add_argument("--write-credentials", metavar="FILE", required=True,
                       help="where to write the credentials as JSON (mode 0600)")
    again.add_argument("--url", help="the bridge's wss:// address (default: as for `client add`)")
    again.set_defaults(handler=cmd_client_credentials)
    p.set_defaults(handler=usage_of(p))

    p = sub.add_parser(
        "pay", help="make a payment through a running bridge (a test client)", formatter_class=formatter,
        description="Connect to a bridge over TLS WebSocket, start a payment and follow it to its end.",
        epilog="Exit status: 0 approved, 1 declined, cancelled or failed, 3 unknown (check the terminal's "
               "receipt), 2 the command could not be sent.")
    p.add_argument("--terminal", required=True, help="the terminal's name in the bridge's configuration")
    p.add_argument("--amount", required=True, help="the amount in major units, e.g. 12.34")
    p.add_argument("--currency", default="EUR", help="ISO 4217 code (default: %(default)s)")
    p.add_argument("--refund", action="store_true", help="a refund (credit) instead of a payment")
    p.add_argument("--cheque", action="store_true", help="pay by cheque (Caisse-AP terminals with a printer)")
    add_connection_arguments(p)
    p.add_argument("--command-id", help="the command id (default: a new random one); re-use it to retry safely")
    p.add_argument("--timeout", type=float, default=240.0,
                   help="stop waiting after this many seconds; the outcome is then unknown (default: %(default)s)")
    p.set_defaults(handler="bridge.cli.pay:run_pay")

    p = sub.add_parser(
        "refund", help="refund an approved payment through a running bridge", formatter_class=formatter,
        description="Refund all or part of an approved card payment on the terminal that took it, and follow the "
                    "refund to its end. The client needs the refund right: `terminal-bridge client add "
                    "back-office --rights read,refund --write-credentials back-office.json`.",
        epilog="Exit status: 0 refunded, 1 declined, cancelled or failed, 3 unknown (check the terminal's "
               "receipt), 2 the command could not be sent.")
    p.add_argument("payment_id", metavar="PAYMENT_ID", help="the approved payment to refund, e.g. pay_3f9c...")
    p.add_argument("--amount", help="the amount to refund in major units, e.g. 5.00 (default: all that is left)")
    add_connection_arguments(p)
    p.add_argument("--command-id", help="the command id (default: a new random one); re-use it to retry safely")
    p.add_argument("--timeout", type=float, default=240.0,
                   help="stop waiting after this many seconds; the outcome is then unknown (default: %(default)s)")
    p.set_defaults(handler="bridge.cli.pay:run_refund")

    p = sub.add_parser(
        "resolve", help="settle an unknown payment with what the terminal's receipt shows",
        description="A payment is unknown when the bridge cannot know its outcome (the terminal's link was lost "
                    "after the request went out, or the bridge restarted mid-payment). Read the terminal's "
                    "receipt or its journal, then record what it shows. The resolution is journaled with the "
                    "client that made it, the note and the time, and sent to the client that started the "
                    "payment as an event.",
        epilog="The client needs the resolve right, and admin to resolve another client's payment: "
               "`terminal-bridge client add store-it --rights read,resolve,admin --write-credentials it.json`. "
               "Exit status: 0 resolved, 2 the resolution could not be made (the reason is printed).")
    p.add_argument("payment_id", metavar="PAYMENT_ID", help="the payment, e.g. pay_3f9c... (`terminal-bridge "
                                                            "payments --state unknown` lists them)")
    p.add_argument("--outcome", required=True, choices=("approved", "declined", "cancelled", "failed"),
                   help="what the receipt shows: approved (the customer was charged), declined, cancelled, or "
                        "failed (nothing was charged)")
    p.add_argument("--note", required=True, help="what the resolution is based on, e.g. \"receipt shows "
                                                 "approved, auth 123456\"")
    p.add_argument("--authorisation", help="the authorisation number printed on the receipt")
    add_connection_arguments(p)
    p.set_defaults(handler="bridge.cli.resolve:run_resolve")

    p = sub.add_parser("payments", help="list recent payments from the journal (for store IT)",
                       description="List recent payments and their states, newest first, read from the "
                                   "journal on this machine.")
    p.add_argument("--limit", type=int, default=20, help="show at most this many payments (default: %(default)s)")
    p.add_argument("--terminal", help="only the payments of this terminal (its name in the configuration)")
    p.add_argument("--state", choices=ALL_STATES, metavar="STATE",
                   help=f"only the payments in this state: {', '.join(ALL_STATES)}")
    p.set_defaults(handler=cmd_payments)
    uplink_cli.register(sub)
    from bridge.cli import status_page

    status_page.register(sub)

    p = sub.add_parser("simulate", help="run a simulated terminal (for demos and tests)")
    sim_sub = p.add_subparsers(dest="simulator", metavar="KIND")
    sim = sim_sub.add_parser(
        "caisse-ap", help="a Caisse-AP terminal over TCP, or on a serial line (--serial)", formatter_class=formatter,
        description="Answer Caisse-AP requests like a real terminal, with scripted outcomes: over TCP (--listen), "
                    "or with --serial on a pseudo-terminal that stands for a serial or USB cable, speaking "
                    "Caisse-AP or Concert V2 (--protocol).")
    add_simulator_arguments(sim)
    add_serial_arguments(sim)
    sim.set_defaults(handler=cmd_simulate_caisse_ap)
    stripe_cli.simulate_parser(sim_sub)
    p.set_defaults(handler=usage_of(p))
    stripe_cli.register(sub)

    p = sub.add_parser("demo", help="run a demo bridge with simulated terminals (used by `make run`)",
                       description="Write a demo configuration under DIR (a self-signed certificate, one client, "
                                   "three simulated Caisse-AP terminals and a simulated Stripe reader on a local "
                                   "fake of Stripe's API), start the simulators and the bridge in the foreground, "
                                   "and print the command that makes a test payment. Everything listens on "
                                   "127.0.0.1 only.")
    p.add_argument("--dir", default="demo", help="where to keep the demo's files (default: %(default)s)")
    p.add_argument("--port", type=int, default=8443, help="the bridge's port (default: %(default)s)")
    p.add_argument("--terminal-port", type=int, default=18888,
                   help="the simulated Caisse-AP terminals' first port: they take it and the next two, and the "
                        "fake Stripe API the one 10 above (default: %(default)s, so 18888-18890 and 18898)")
    p.set_defaults(handler="bridge.cli.demo:run_demo")


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(args)
    except ConfigError as e:
        return report_config_error(e)
    print(f"{args.config}: OK - {len(config.terminals)} terminal(s), {len(config.clients)} client(s), "
          f"listening on {config.listen_host}:{config.listen_port}, state in {config.state_dir}")
    if not config.clients:
        print("Note: no clients yet; add one with `terminal-bridge client add NAME`.")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args)
    except ConfigError as e:
        return report_config_error(e)
    from bridge.service.run import run_daemon

    return run_daemon(config)


def cmd_client_add(args: argparse.Namespace) -> int:

    rights = tuple(r.strip() for r in args.rights.split(",") if r.strip())
    bad = [r for r in rights if r not in RIGHTS]
    if bad:
        print(f"Unknown right(s): {', '.join(bad)}. Choose among {', '.join(RIGHTS)}.", file=sys.stderr)
        return 2
    clients_file, state_dir = clients_file_and_state_dir(args.config)
    client_id = "cl_" + uuid.uuid4().hex[:16]
    secret_in, secret_out = new_secret(), new_secret()
    # Run as root (sudo), the file must still be readable by the account the bridge runs as: the owner of
    # its state directory (the .deb's _terminal-bridge).
    owner = None
    if os.geteuid() == 0 and os.path.isdir(state_dir):
        st = os.stat(state_dir)
        owner = (st.st_uid, st.st_gid)
    try:
        add_client(clients_file, args.name, client_id, secret_in, secret_out, rights, args.algorithm, owner)
    except (ValueError, OSError) as e:
        print(f"Could not add the client: {e}", file=sys.stderr)
        return 2
    print(f"Client {args.name!r} added to {clients_file}. "
          "Reload the bridge to let it in: sudo systemctl reload terminal-bridge")
    print("Give these to the client; the secrets are not shown again:")
    print(f"  client id:       {client_id}")
    print(f"  inbound secret:  {secret_in}   (the client signs commands with it)")
    print(f"  outbound secret: {secret_out}   (the client checks the bridge's replies with it)")
    print(f"  algorithm:       HMAC-{args.algorithm.upper()}")
    if args.write_credentials:
        return _write_credentials(args, client_id, secret_in, secret_out, args.algorithm)
    return 0


def cmd_client_credentials(args: argparse.Namespace) -> int:
    clients_file, _state_dir = clients_file_and_state_dir(args.config)
    clients = load_clients(clients_file, [])
    client = clients.get(args.name)
    if client is None:
        known = ", ".join(sorted(clients)) or "none yet"
        print(f"No client named {args.name!r} in {clients_file} (clients: {known}).", file=sys.stderr)
        return 2
    return _write_credentials(args, client.id, client.secret_in, client.secret_out, client.algorithm)


def _write_credentials(args: argparse.Namespace, client_id: str, secret_in: str, secret_out: str,
                       algorithm: str) -> int:
    """Write the credentials file `pay` reads, with the bridge's address and certificate fingerprint; warn on
    standard error about what cannot be known yet."""
    data: dict[str, Any] = {"client_id": client_id, "secret_in": secret_in, "secret_out": secret_out,
                            "algorithm": algorithm}
    endpoint = bridge_endpoint(args.config)
    url = args.url or endpoint.url
    if url:
        data["url"] = url
    else:
        print("Warning: the bridge's address cannot be known yet (it listens on a port chosen at start); "
              "add it with --url wss://HOST:PORT.", file=sys.stderr)
    if url and not args.url and endpoint.this_machine_only:
        print(f"Warning: the bridge listens on every address, but this machine has none that other machines "
              f"reach it at (no network route), so the credentials file says {url}, which works on this machine "
              f"only. For a till on another machine, write it again with --url wss://ADDRESS:PORT "
              f"(`terminal-bridge client credentials {args.name} --write-credentials {args.write_credentials} "
              f"--url ...`).", file=sys.stderr)
    if endpoint.fingerprint:
        data["fingerprint"] = endpoint.fingerprint
    else:
        print(f"Warning: the bridge has no certificate yet ({endpoint.certificate} is made at its first start), "
              "so the credentials file has no fingerprint to check the bridge against. Once the bridge has "
              "started, write the file again:\n"
              f"  terminal-bridge client credentials {args.name} --write-credentials {args.write_credentials}",
              file=sys.stderr)
    try:
        write_private_json(args.write_credentials, data, owner=_invoking_user())
    except OSError as e:
        print(f"Could not write the credentials file: {e}", file=sys.stderr)
        return 2
    print(f"Credentials written to {args.write_credentials} (mode 0600)"
          + (f", for the bridge at {url}." if url else "."))
    return 0


def _invoking_user() -> Optional[tuple[int, int]]:
    """Under sudo, the account that ran sudo: a credentials file written for them must be theirs to read."""
    if os.geteuid() != 0:
        return None
    try:
        return int(os.environ["SUDO_UID"]), int(os.environ["SUDO_GID"])
    except (KeyError, ValueError):
        return None


@dataclass(frozen=True)
class BridgeEndpoint:
    """What a client needs to reach this machine's bridge: its address and its certificate's fingerprint."""

    url: Optional[str]
    certificate: str
    fingerprint: Optional[str]
    #: The bridge listens on every address, yet the only one found is this machine's loopback address.
    this_machine_only: bool = False


def bridge_endpoint(config_path: str) -> BridgeEndpoint:
    """The bridge's wss:// address and certificate fingerprint, read from the ``[bridge]`` section alone: the
    rest of the configuration (terminals, uplinks) may have problems, or types this need not know."""
    from bridge.api.tls import fingerprint_of_pem  # cryptography: only when needed

    parser = configparser.ConfigParser(interpolation=None, default_section="__no_defaults__")
    try:
        parser.read(config_path, encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError):
        pass
    section: Mapping[str, str] = {}
    if parser.has_section("bridge"):
        section = parser["bridge"]
    base = os.path.dirname(os.path.abspath(config_path))
    state_dir = os.path.join(base, section.get("state_dir", "") or DEFAULT_STATE_DIR)
    certificate = os.path.join(base, section.get("tls_certificate", "")
                               or os.path.join(state_dir, "tls", "bridge.crt"))
    try:
        with open(certificate, "rb") as f:
            fingerprint: Optional[str] = fingerprint_of_pem(f.read())
    except (OSError, ValueError):
        fingerprint = None
    url, this_machine_only = None, False
    host, port = _host_port(section.get("listen", "") or f"0.0.0.0:{DEFAULT_PORT}", DEFAULT_PORT)
    if port:  # port 0 (any free port, for tests) is only known once the bridge runs
        if host in ("0.0.0.0", "::"):
            host = machine_address(ipv6=host == "::")
            this_machine_only = _is_loopback(host)
        url = f"wss://[{host}]:{port}" if ":" in host else f"wss://{host}:{port}"
    return BridgeEndpoint(url, certificate, fingerprint, this_machine_only)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def machine_address(ipv6: bool = False) -> str:
    """The address the shop's other machines reach this one at: the source address of the default route (no
    packet is sent), else the host name's address (Debian maps it to 127.0.1.1), else the loopback address."""
    family, probe = (socket.AF_INET6, "2001:db8::1") if ipv6 else (socket.AF_INET, "192.0.2.1")
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((probe, 9))
            return s.getsockname()[0]
    except OSError:
        pass
    if not ipv6:
        try:
            return socket.gethostbyname(socket.gethostname())
        except OSError:
            pass
    return "::1" if ipv6 else "127.0.0.1"


def cmd_payments(args: argparse.Namespace) -> int:
    try:
        config = load_config(args)
    except ConfigError as e:
        return report_config_error(e)
    return list_payments(config, args)


def cmd_simulate_caisse_ap(args: argparse.Namespace) -> int:
    reactor = global_reactor()

    if args.serial:
        from bridge.cli.simulators import start_serial_simulator

        try:
            terminal = start_serial_simulator(reactor, args)
        except OSError as e:
            print(f"The simulator could not create its device: {e}", file=sys.stderr)
            return 1
        print(f"Caisse-AP serial simulator ({args.protocol}, outcome: {args.outcome}) on {terminal.path}. "
              f"Configure the terminal with: type = caisse-ap-serial, device = {terminal.path}, "
              f"protocol = {args.protocol}. Ctrl-C stops it.", flush=True)
        reactor.addSystemEventTrigger("before", "shutdown", terminal.close)
        reactor.run()
        return 0

    from bridge.cli.simulators import start_simulator

    def started(port: Any) -> None:
        address = port.getHost()
        print(f"Caisse-AP simulator listening on {address.host}:{address.port} "
              f"(outcome: {args.outcome}). Ctrl-C stops it.", flush=True)

    def failed(failure: Any) -> None:
        print(f"The simulator could not start: {failure.getErrorMessage()}", file=sys.stderr)
        reactor.stop()

    start_simulator(reactor, args).addCallbacks(started, failed)
    reactor.run()
    return 0
