"""Browser-facing guards: the DNS-rebinding Host check and CORS, as Ollama does them (spec §0, §7).

Host check (Ollama's `allowedHostsMiddleware`): only when the bridge is bound to loopback. A web
page that rebinds its own name to 127.0.0.1 still sends `Host: evil.example`; such requests get
403. Allowed: no Host, `localhost`, this machine's hostname, `*.localhost|*.local|*.internal`, or a
loopback, private, unspecified or local-interface IP, with any port.

CORS (gin-contrib/cors as Ollama configures it): requests with an `Origin` that is neither
allowed nor the server's own address get 403 and no `Access-Control-Allow-Origin`, so a page
cannot even trigger a "simple" POST; allowed origins get the header, and their preflight
(`OPTIONS` + `Access-Control-Request-Method`) is answered 204 here.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
from dataclasses import dataclass

from flask import Flask, Response, request

from bridge.config import Config
from bridge.errors import Forbidden
from bridge.state import bridge

log = logging.getLogger(__name__)

BUILTIN_ORIGINS = (
    *(f"{scheme}://{host}{port}" for host in ("localhost", "127.0.0.1", "0.0.0.0")
      for scheme in ("http", "https") for port in ("", ":*")),
    "app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*",
)
ALLOWED_HEADERS = (
    "Authorization", "Content-Type", "User-Agent", "Accept", "X-Requested-With", "OpenAI-Beta",
    # the OpenAI SDKs' telemetry headers (Ollama lists these names one by one)
    "x-stainless-arch", "x-stainless-async", "x-stainless-custom-poll-interval",
    "x-stainless-helper-method", "x-stainless-lang", "x-stainless-os",
    "x-stainless-package-version", "x-stainless-poll-helper", "x-stainless-retry-count",
    "x-stainless-runtime", "x-stainless-runtime-version", "x-stainless-timeout",
)
ALLOWED_METHODS = "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"
MAX_AGE = str(12 * 3600)  # gin-contrib/cors DefaultConfig
LOCAL_TLDS = (".localhost", ".local", ".internal")
# RFC 3986 reg-name, IP literal, port
_HOST_CHARS = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:%\[\]-]*")


@dataclass(frozen=True)
class Guard:
    """One app's settings: whether the Host check runs, and the allowed origins."""

    check_host: bool
    hostname: str
    local_ips: frozenset[str]
    allow_all: bool
    exact: frozenset[str]
    patterns: tuple[re.Pattern[str], ...]

    @classmethod
    def from_config(cls, config: Config) -> Guard:
        origins = [o.strip().lower() for o in (*config.origins, *BUILTIN_ORIGINS) if o.strip()]
        wild = tuple(re.compile(".*".join(re.escape(p) for p in o.split("*")))
                     for o in origins if "*" in o)
        check_host = config.host.is_loopback
        return cls(check_host=check_host, hostname=socket.gethostname().lower(),
                   local_ips=_local_ips() if check_host else frozenset(), allow_all="*" in origins,
                   exact=frozenset(o for o in origins if "*" not in o), patterns=wild)

    def host_allowed(self, host_header: str) -> bool:
        """Ollama's rule for the Host header (any port)."""
        if not _HOST_CHARS.fullmatch(host_header):
            return False  # Go's server refuses such a Host outright
        host = _strip_port(host_header.lower())
        if not host or host == "localhost" or host == self.hostname or host.endswith(LOCAL_TLDS):
            return True
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return ip.is_loopback or ip.is_private or ip.is_unspecified or ip.is_link_local \
            or str(ip) in self.local_ips

    def origin_allowed(self, origin: str) -> bool:
        origin = origin.lower()
        return (self.allow_all or origin in self.exact
                or any(p.fullmatch(origin) for p in self.patterns))


def _strip_port(host: str) -> str:
    """`name:port`, `[v6]:port`, `[v6]` or a bare IPv6 literal -> the host part."""
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    if host.count(":") == 1:
        return host.split(":", 1)[0]
    return host


def _local_ips() -> frozenset[str]:
    """This machine's outward addresses (Ollama's isLocalIP): the source address a UDP socket
    would use for a non-local destination. No packet is sent and no DNS is asked."""
    ips: set[str] = set()
    for family, probe in ((socket.AF_INET, "10.255.255.255"), (socket.AF_INET6, "2001:db8::1")):
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.connect((probe, 9))
                ips.add(str(sock.getsockname()[0]).split("%", 1)[0])
        except OSError:  # no such route or family: nothing to add
            pass
    return frozenset(ips)


def _guard() -> Guard:
    return bridge().guard


def check_request() -> Response | None:
    """before_request: 403 for a foreign Host or Origin; 204 for an allowed preflight."""
    guard = _guard()
    host = _host_header()
    if guard.check_host and not guard.host_allowed(host):
        log.warning("refused host=%r path=%s", host, request.path)
        raise Forbidden(f"host {host!r} is not allowed: the bridge is bound to loopback "
                        "and only answers local names (DNS-rebinding protection)")
    origin = request.headers.get("Origin")
    if not origin or _same_host(origin):
        return None
    if not guard.origin_allowed(origin):
        log.warning("refused origin=%r path=%s", origin, request.path)
        raise Forbidden(f"origin {origin!r} is not allowed; add it to OLLAMA_ORIGINS to allow it")
    if request.method == "OPTIONS" and request.headers.get("Access-Control-Request-Method"):
        response = Response(status=204, headers=_preflight_headers())
        response.headers.remove("Content-Type")
        return response
    return None


def _host_header() -> str:
    # the raw header: werkzeug's request.host turns a Host with invalid characters into ""
    return request.headers.get("Host", "")


def _same_host(origin: str) -> bool:
    """A page served from the bridge's own address is not cross-origin."""
    host = _host_header()
    return bool(host) and origin in (f"http://{host}", f"https://{host}")


def _preflight_headers() -> dict[str, str]:
    requested = request.headers.get("Access-Control-Request-Headers", "")
    stainless = [h.strip() for h in requested.split(",")
                 if h.strip().lower().startswith("x-stainless-")]
    known = {h.lower() for h in ALLOWED_HEADERS}
    extra = [h for h in stainless if h.lower() not in known]
    return {"Access-Control-Allow-Methods": ALLOWED_METHODS,
            "Access-Control-Allow-Headers": ", ".join((*ALLOWED_HEADERS, *extra)),
            "Access-Control-Max-Age": MAX_AGE}


def add_cors_headers(response: Response) -> Response:
    """after_request: the allow header for allowed cross-origin requests, never for others."""
    origin = request.headers.get("Origin")
    if not origin or _same_host(origin) or not _guard().origin_allowed(origin):
        return response
    response.headers["Access-Control-Allow-Origin"] = "*" if _guard().allow_all else origin
    response.vary.add("Origin")
    return response


def install(app: Flask) -> None:
    """Register the guard's hooks (the Guard itself is `bridge().guard`)."""
    app.before_request(check_request)
    app.after_request(add_cors_headers)
