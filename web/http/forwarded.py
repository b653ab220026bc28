"""Who the client is and whether it came over HTTPS, when proxies stand in front.

The app sees the proxy, not the client: the bundled nginx connects over a unix socket, a
host's own proxy over TCP. Each proxy names the address it took the request from in
X-Forwarded-For and the scheme in X-Forwarded-Proto, but any client can send those
headers too. So they are believed only as far as the proxies are trusted
(WHISPER_TRUSTED_PROXIES, networks; the unix socket is always trusted, only local
processes can reach it): walking X-Forwarded-For from the right, the client is the first
address that is not a trusted proxy. X-Forwarded-Proto counts only when a trusted proxy
with an address stands in the chain: the bundled nginx has no TLS of its own and passes on
what its peer said, so what matters is who its peer is.

The outcome goes into the WSGI environ (REMOTE_ADDR, wsgi.url_scheme), so that
`request.remote_addr` (rate limits) and `request.is_secure` (Secure cookies) say it.
"""

from __future__ import annotations

import ipaddress
from typing import Callable, Iterable, List, Tuple


def networks(entries: Iterable[str]) -> List[ipaddress._BaseNetwork]:
    """WHISPER_TRUSTED_PROXIES' entries (checked by Settings) as networks."""
    return [ipaddress.ip_network(entry.strip(), strict=False) for entry in entries]


def is_local_socket(peer: str) -> bool:
    """A unix-socket peer: gunicorn gives it no address (the bundled nginx)."""
    return peer == "" or peer.startswith(("/", "unix:"))


class TrustedProxies:
    """WSGI middleware: the client's address and scheme, as trusted proxies tell them."""

    def __init__(self, app: Callable, trusted: Iterable[str]):
        self.app = app
        self.networks = networks(trusted)

    def __call__(self, environ, start_response):
        client, vouched = self.client(environ.get("REMOTE_ADDR") or "",
                                      environ.get("HTTP_X_FORWARDED_FOR", ""))
        environ["REMOTE_ADDR"] = client
        said = environ.get("HTTP_X_FORWARDED_PROTO", "").split(",")[-1].strip().lower()
        if environ.get("wsgi.url_scheme") != "https":  # real TLS here stays https
            environ["wsgi.url_scheme"] = "https" if vouched and said == "https" else "http"
        return self.app(environ, start_response)

    def client(self, peer: str, forwarded_for: str) -> Tuple[str, bool]:
        """(the client's address, whether a trusted proxy with an address is in the chain
        and so its X-Forwarded-Proto counts)."""
        if not self._trusted(peer):
            return peer, False
        vouched = not is_local_socket(peer)
        client = peer
        for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
            client = hop
            if not self._trusted(hop):
                break
            vouched = True
        return client, vouched

    def _trusted(self, address: str) -> bool:
        if is_local_socket(address):
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped:  # ::ffff:127.0.0.1 from a dual-stack socket
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.networks)
