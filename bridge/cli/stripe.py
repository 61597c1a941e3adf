"""`terminal-bridge stripe ...`: set up Stripe readers (locations, registration); `simulate stripe`: the fake API.

The setup commands run once, by hand, so they call Stripe directly on the main thread (no reactor).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Optional

from bridge.cli.simulators import add_fake_arguments, start_fake
from bridge.config import ConfigError
from bridge.service.reactor import global_reactor

EPILOG = """\
The key and Stripe's address come from a [terminal:NAME] section with type = stripe in the configuration
(--terminal picks one when there are several), or from --api-key-file and --api-base.

Typical setup (docs/stripe.md):
  terminal-bridge stripe locations --create "Main shop" --country FR --city Lyon
  terminal-bridge stripe register --code sepia-cerulean-aqua --location tml_... --label "Till 1"
  terminal-bridge stripe readers
"""


def register(sub: argparse._SubParsersAction) -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("stripe", help="set up Stripe Terminal readers (locations, registration)",
                       formatter_class=formatter, epilog=EPILOG,
                       description="List and create Stripe Terminal locations, list readers, and register a new "
                                   "reader with the code shown on its screen.")
    p.add_argument("--terminal", help="the [terminal:NAME] whose key to use (default: the only Stripe one)")
    p.add_argument("--api-key-file", help="read the Stripe key from this file instead")
    p.add_argument("--api-base", help="Stripe's address (default: from the terminal, else https://api.stripe.com)")
    actions = p.add_subparsers(dest="stripe_command", metavar="ACTION")

    loc = actions.add_parser("locations", help="list locations, or create one with --create")
    loc.add_argument("--create", metavar="NAME", help="create a location with this display name")
    loc.add_argument("--country", help="two-letter country code of the new location, e.g. FR")
    loc.add_argument("--line1", default="", help="street address")
    loc.add_argument("--city", default="", help="the new location's city")
    loc.add_argument("--postal-code", default="", help="the new location's postal code")
    loc.set_defaults(handler=cmd_locations)

    readers = actions.add_parser("readers", help="list the readers registered to the account")
    readers.add_argument("--location", help="only the readers of this location (tml_...)")
    readers.set_defaults(handler=cmd_readers)

    reg = actions.add_parser("register", help="register a reader with its registration code",
                             description="Register a reader to a location. On the reader, open the settings, "
                                         "enter the admin PIN, choose 'Generate pairing code' and type the "
                                         "three words here.")
    reg.add_argument("--code", required=True, help="the registration code shown on the reader, e.g. "
                                                   "sepia-cerulean-aqua")
    reg.add_argument("--location", required=True, help="the location id (tml_...), see `stripe locations`")
    reg.add_argument("--label", required=True, help="a name for the reader, e.g. 'Till 1'")
    reg.set_defaults(handler=cmd_register)
    p.set_defaults(handler=lambda args: (p.print_help(), 2)[1])


def _api(args: argparse.Namespace) -> Any:
    """A StripeAPI for the command line, or an error message."""
    from bridge.terminals.stripe.options import DEFAULT_API_BASE, parse_stripe_options, read_api_key

    key_file, credential, base = args.api_key_file, None, args.api_base
    if not key_file:
        from bridge.terminals.catalogue import VALIDATORS
        from bridge.config import load

        try:
            config = load(args.config, VALIDATORS)
        except ConfigError as e:
            return "The configuration has problems (run `terminal-bridge check-config`):\n" + str(e)
        stripes = {n: t for n, t in config.terminals.items() if t.type == "stripe"}
        if args.terminal:
            if args.terminal not in stripes:
                return f"There is no Stripe terminal named {args.terminal!r} in {args.config}."
            stripes = {args.terminal: stripes[args.terminal]}
        if len(stripes) != 1:
            return ("Name the terminal whose key to use with --terminal NAME." if stripes else
                    f"{args.config} has no Stripe terminal; give --api-key-file FILE instead.")
        settings, _ = parse_stripe_options(next(iter(stripes.values())).options)
        key_file, credential = settings["api_key_file"], settings["api_key_credential"]
        base = base or settings["api_base"]
    key, problem = read_api_key(key_file, credential)
    if key is None:
        return f"No Stripe key: {problem}."
    from bridge.terminals.stripe.api import StripeAPI

    return StripeAPI(None, key, api_base=base or DEFAULT_API_BASE)


def _run(args: argparse.Namespace, action: Any) -> int:
    from bridge.errors import BridgeError

    api = _api(args)
    if isinstance(api, str):
        print(api, file=sys.stderr)
        return 2
    try:
        action(api)
    except BridgeError as error:
        said = getattr(error, "stripe_message", None)
        print(f"{error.message}" + (f"\nStripe says: {said}" if said else ""), file=sys.stderr)
        return 1
    return 0


def cmd_locations(args: argparse.Namespace) -> int:
    def action(api: Any) -> None:
        if args.create:
            if not args.country:
                from bridge.errors import BridgeError

                raise BridgeError("bad_request", "Give the location's --country (two letters, e.g. FR).")
            address = {"country": args.country.upper(), "line1": args.line1, "city": args.city,
                       "postal_code": args.postal_code}
            created = api.call_blocking("post", "/v1/terminal/locations",
                                        {"display_name": args.create,
                                         "address": {k: v for k, v in address.items() if v}})
            print(f"Created location {created['id']} ({created.get('display_name')}).")
            return
        answer = api.call_blocking("get", "/v1/terminal/locations", {"limit": 100})
        rows = answer.get("data") or []
        if not rows:
            print("No locations yet; create one with `terminal-bridge stripe locations --create NAME "
                  "--country CC`.")
        for loc in rows:
            address = loc.get("address") or {}
            print(f"{loc['id']:30} {loc.get('display_name') or '':30} {address.get('city') or ''} "
                  f"{address.get('country') or ''}".rstrip())

    return _run(args, action)


def cmd_readers(args: argparse.Namespace) -> int:
    def action(api: Any) -> None:
        params: dict[str, Any] = {"limit": 100}
        if args.location:
            params["location"] = args.location
        rows = api.call_blocking("get", "/v1/terminal/readers", params).get("data") or []
        if not rows:
            print("No readers yet; register one with `terminal-bridge stripe register`.")
        for reader in rows:
            print(f"{reader['id']:28} {reader.get('serial_number') or '':24} {reader.get('device_type') or '':24} "
                  f"{reader.get('status') or '-':8} {reader.get('label') or ''}")

    return _run(args, action)


def cmd_register(args: argparse.Namespace) -> int:
    def action(api: Any) -> None:
        reader = api.call_blocking("post", "/v1/terminal/readers",
                                   {"registration_code": args.code, "location": args.location,
                                    "label": args.label})
        print(f"Registered {reader.get('device_type')} {reader['id']} (serial {reader.get('serial_number')}) "
              f"as {reader.get('label')!r}.")
        print("Add it to the bridge's configuration, for example:\n")
        print(f"[terminal:{_slug(args.label)}]\ntype = stripe\nserial_number = {reader.get('serial_number')}\n"
              "api_key_file = /etc/terminal-bridge/stripe.key")

    return _run(args, action)


def _slug(label: str) -> str:
    slug = "".join(ch if ch.isalnum() else "-" for ch in label.lower()).strip("-")
    return slug or "stripe-reader"


def cmd_simulate_stripe(args: argparse.Namespace) -> int:
    reactor = global_reactor()

    def started(fake: Any) -> None:
        print(f"Fake Stripe API on {fake.url} (test keys sk_test_... or rk_test_...). Readers:", flush=True)
        for reader in fake.readers.values():
            knobs = fake.reader_knobs(reader["id"])
            how = (f"presents {knobs.auto_present} {knobs.auto_present_delay:g}s after each payment starts"
                   if knobs.auto_present else "waits for POST /_fake/present")
            print(f"  {reader['id']}  serial {reader['serial_number']}  ({how})", flush=True)
        print(f"Configure a terminal with: type = stripe, serial_number = ..., api_base = {fake.url}, "
              "api_key_file = a file holding sk_test_anything. Ctrl-C stops it.", flush=True)

    def failed(failure: Any) -> None:
        print(f"The fake Stripe API could not start: {failure.getErrorMessage()}", file=sys.stderr)
        reactor.stop()

    start_fake(reactor, args).addCallbacks(started, failed)
    reactor.run()
    return 0


def simulate_parser(sim_sub: argparse._SubParsersAction) -> Optional[argparse.ArgumentParser]:
    """Add `simulate stripe` to the `simulate` sub-commands."""
    sim = sim_sub.add_parser("stripe", help="a fake Stripe API with simulated readers (loopback only)",
                             description="Serve a stateful fake of Stripe's Terminal API on 127.0.0.1, with "
                                         "simulated readers that present a test card by themselves.")
    add_fake_arguments(sim)
    sim.set_defaults(handler=cmd_simulate_stripe)
    return sim
