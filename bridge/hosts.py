"""OLLAMA_HOST-style addresses, parsed exactly as Ollama's ``envconfig.Host`` parses them.

A bare ``:port`` means all interfaces (host ``0.0.0.0``); Go's ``net`` helpers (SplitHostPort,
JoinHostPort, ParseIP) are mirrored here so odd values land where Ollama lands them.

>>> parse_host("").url, parse_host("0.0.0.0").url, parse_host(":1234").bind
('http://127.0.0.1:11434', 'http://127.0.0.1:11434', '0.0.0.0:1234')
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
from dataclasses import dataclass

from bridge.envvars import trim

DEFAULT_PORT = 11434
# An invalid port warns on the settings' logger, as every other invalid setting does.
log = logging.getLogger("bridge.config")


@dataclass(frozen=True)
class HostSpec:
    """A parsed OLLAMA_HOST-style address; ``path`` is empty or starts with ``/``."""

    scheme: str
    host: str
    port: int
    path: str = ""

    @property
    def bind(self) -> str:
        """Address for a server to listen on (gunicorn ``bind``).

        >>> parse_host("[::1]:1337").bind, parse_host("example.com").bind
        ('[::1]:1337', 'example.com:11434')
        """
        return _join_host_port(self.host or "0.0.0.0", self.port)

    @property
    def connect_host(self) -> str:
        """Host for a client to dial: unspecified addresses become loopback.

        >>> parse_host("0.0.0.0").connect_host, parse_host("[::]").connect_host
        ('127.0.0.1', '::1')
        """
        ip = _parse_ip(self.host)
        if not self.host or (ip is not None and ip.is_unspecified):
            return "::1" if ip is not None and ip.version == 6 else "127.0.0.1"
        return self.host

    @property
    def url(self) -> str:
        """Base URL for clients (Ollama's ``ConnectableHost``), path kept.

        >>> parse_host("https://example.com/ollama").url
        'https://example.com:443/ollama'
        """
        return f"{self.scheme}://{_join_host_port(self.connect_host, self.port)}{self.path}"

    @property
    def is_loopback(self) -> bool:
        """True when bound to localhost or a loopback IP only.

        >>> parse_host("").is_loopback, parse_host("[::1]").is_loopback
        (True, True)
        >>> parse_host(":1").is_loopback
        False
        """
        if self.host.lower() == "localhost":
            return True
        ip = _parse_ip(self.host)
        return ip is not None and ip.is_loopback

    def with_port(self, port: int) -> HostSpec:
        """Return a copy with ``port`` replaced."""
        if not 0 <= port <= 65535:
            raise ValueError(f"port out of range: {port}")
        return dataclasses.replace(self, port=port)


def _parse_ip(s: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Parse an IP literal like Go's ``net.ParseIP`` (no zones); None if not an IP."""
    if not s or "%" in s:
        return None
    try:
        return ipaddress.ip_address(s)
    except ValueError:
        return None


def _ip_string(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """Render an IP like Go's ``IP.String`` (IPv4-mapped IPv6 shown as IPv4)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return ip.compressed


def _join_host_port(host: str, port: int) -> str:
    """Go's ``net.JoinHostPort``: bracket hosts containing a colon."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _split_host_port(hostport: str) -> tuple[str, str] | None:
    """Go's ``net.SplitHostPort``; None where Go returns an error."""
    i = hostport.rfind(":")
    if i < 0:
        return None
    j = k = 0
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0 or end + 1 != i:
            return None
        host, j, k = hostport[1:end], 1, end + 1
    else:
        host = hostport[:i]
        if ":" in host:
            return None
    if "[" in hostport[j:] or "]" in hostport[k:]:
        return None
    return host, hostport[i + 1 :]


def _parse_port(port: str, default: int) -> int:
    """Parse a port like Ollama (``ParseInt`` then 0..65535), warning and defaulting otherwise."""
    digits = port[1:] if port[:1] in "+-" else port
    if digits.isascii() and digits.isdigit():
        n = int(port)
        if 0 <= n <= 65535:
            return n
    log.warning("invalid port, using default: port=%r default=%d", port, default)
    return default


def _split_scheme(s: str) -> tuple[str, str, int | None]:
    """Split ``scheme://rest``; return (scheme, rest, scheme default port or None)."""
    scheme, sep, rest = s.partition("://")
    if not sep:
        if s == "ollama.com":
            return "https", "ollama.com:443", None
        return "http", s, None
    return scheme, rest, {"http": 80, "https": 443}.get(scheme)


def parse_host(raw: str | None, default_port: int = DEFAULT_PORT) -> HostSpec:
    """Parse an OLLAMA_HOST-style value exactly like Ollama's ``envconfig.Host``.

    A bare ``:port`` means all interfaces (host ``0.0.0.0``).

    >>> parse_host("1.2.3.4")
    HostSpec(scheme='http', host='1.2.3.4', port=11434, path='')
    >>> parse_host("::1").bind, parse_host("http://h").port, parse_host("https://h").port
    ('[::1]:11434', 80, 443)
    >>> parse_host(":66000").port, parse_host("'1.2.3.4'").host
    (11434, '1.2.3.4')
    """
    s = trim(raw)
    scheme, hostport, scheme_port = _split_scheme(s)
    port_default = default_port if scheme_port is None else scheme_port
    hostport, slash, path = hostport.partition("/")
    split = _split_host_port(hostport)
    if split is None:
        ip = _parse_ip(hostport.strip("[]"))
        host = _ip_string(ip) if ip is not None else (hostport or "127.0.0.1")
        port = port_default
    else:
        host, port_text = split
        port = _parse_port(port_text, port_default)
    return HostSpec(
        scheme=scheme, host=host or "0.0.0.0", port=port, path=slash + path if path else ""
    )
