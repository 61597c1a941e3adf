"""The ``[status]`` section of bridge.conf: the status page's own HTTPS listener and who may scrape /metrics."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from typing import Mapping, Optional, Union

DEFAULT_PORT = 8766
#: A bearer token shorter than this is refused: it would be guessed.
MIN_TOKEN_LENGTH = 32
PASSWORD_FILE = "status-page.password"

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


@dataclass(frozen=True)
class StatusConfig:
    enabled: bool
    listen_host: str
    listen_port: int
    password_file: str
    metrics_token: Optional[str] = field(default=None, repr=False)
    metrics_allow: tuple[Network, ...] = ()

    def may_scrape(self, address: str, authorization: Optional[bytes]) -> bool:
        """True when a scrape from ``address`` with that Authorization header is allowed."""
        import hmac

        if self.metrics_token and authorization is not None:
            expected = b"Bearer " + self.metrics_token.encode()
            if hmac.compare_digest(authorization.strip(), expected):
                return True
        try:
            peer = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
            peer = peer.ipv4_mapped
        return any(peer in network for network in self.metrics_allow)


def parse_status(options: Mapping[str, str], state_dir: str,
                 host_port) -> tuple[Optional[StatusConfig], list[tuple[str, str]]]:
    """Check a ``[status]`` section; returns the config (None when unusable) and problems as (key, message).
    ``host_port`` is bridge.config's HOST:PORT parser."""
    problems: list[tuple[str, str]] = []
    known = {"enabled", "listen", "password_file", "metrics_token", "metrics_allow"}
    for key in options:
        if key not in known:
            problems.append((key, "unknown setting (check the spelling)"))
    enabled_text = options.get("enabled", "yes").strip().lower()
    if enabled_text not in ("yes", "no", "true", "false", "on", "off", "1", "0"):
        problems.append(("enabled", "must be yes or no"))
    enabled = enabled_text in ("yes", "true", "on", "1")
    listen = options.get("listen", f"0.0.0.0:{DEFAULT_PORT}")
    host, port = host_port(listen, DEFAULT_PORT)
    if port is None:
        problems.append(("listen", f"{listen!r} is not HOST:PORT with a port 0-65535"))
    token = options.get("metrics_token", "").strip() or None
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        problems.append(("metrics_token", f"must be at least {MIN_TOKEN_LENGTH} characters (make one with "
                                          "`openssl rand -hex 32`)"))
    networks: list[Network] = []
    for item in options.get("metrics_allow", "").replace(",", " ").split():
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            problems.append(("metrics_allow", f"{item!r} is not an address or a network such as 192.168.1.0/24"))
    password_file = os.path.join(state_dir, options.get("password_file", "") or PASSWORD_FILE)
    if problems or port is None:
        return None, problems
    return StatusConfig(enabled, host, port, password_file, token, tuple(networks)), problems
