"""A small HTTP client for the CLI's commands against a running bridge (or any Ollama)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

import requests

from bridge.errors import BridgeError
from bridge.hosts import parse_host

CONNECT_TIMEOUT = 3.05


class ClientError(BridgeError):
    """The server could not be reached or answered with an error."""


def base_url(env: Mapping[str, str] | None = None) -> str:
    """Where client commands connect: MLX_BRIDGE_HOST, else OLLAMA_HOST, else 127.0.0.1:11434.

    >>> base_url({}), base_url({"OLLAMA_HOST": "0.0.0.0:9"})
    ('http://127.0.0.1:11434', 'http://127.0.0.1:9')
    >>> base_url({"MLX_BRIDGE_HOST": "h:1", "OLLAMA_HOST": ":9"})
    'http://h:1'
    """
    env = os.environ if env is None else env
    raw = (env.get("MLX_BRIDGE_HOST") or "").strip() or env.get("OLLAMA_HOST")
    return parse_host(raw).url


class Client:
    """JSON and NDJSON calls; every failure becomes a ClientError with the server's message."""

    def __init__(self, url: str | None = None, read_timeout: float | None = None) -> None:
        self.url = (url or base_url()).rstrip("/")
        self.timeout = (CONNECT_TIMEOUT, read_timeout)
        self.session = requests.Session()

    def get(self, path: str) -> Any:
        return self._json(self._send("GET", path))

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self._json(self._send("POST", path, body))

    def delete(self, path: str, body: dict[str, Any]) -> None:
        self._send("DELETE", path, body).close()

    def stream(self, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """POST and yield each NDJSON line; an `{"error"}` line raises ClientError."""
        response = self._send("POST", path, body, stream=True)
        try:
            for raw in response.iter_lines():
                if not raw:
                    continue
                line = _decode(raw)
                if "error" in line:
                    raise ClientError(str(line["error"]))
                yield line
        except requests.RequestException as exc:
            raise ClientError(f"the connection broke mid-stream: {exc}") from None
        finally:
            response.close()

    def _send(self, method: str, path: str, body: dict[str, Any] | None = None,
              stream: bool = False) -> requests.Response:
        try:
            response = self.session.request(method, self.url + path, json=body, stream=stream,
                                            timeout=self.timeout)
        except requests.ConnectionError:
            raise ClientError(f"could not connect to {self.url}: is the server running? "
                              "(`mlx-bridge start`, or set MLX_BRIDGE_HOST / OLLAMA_HOST)"
                              ) from None
        except requests.RequestException as exc:
            raise ClientError(f"request to {self.url}{path} failed: {exc}") from None
        if response.status_code >= 400:
            raise ClientError(_error_text(response), status=response.status_code)
        return response

    @staticmethod
    def _json(response: requests.Response) -> Any:
        if not response.content:
            return {}
        try:
            return response.json()
        except ValueError:
            raise ClientError("the server sent something that is not JSON: "
                              f"{response.text[:200]!r}") from None


def _decode(raw: bytes) -> dict[str, Any]:
    try:
        line = json.loads(raw)
    except ValueError:
        raise ClientError(f"the server sent a line that is not JSON: {raw[:200]!r}") from None
    if not isinstance(line, dict):
        raise ClientError(f"unexpected line from the server: {raw[:200]!r}")
    return line


def _error_text(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "error" in body:
        error = body["error"]
        return str(error.get("message", error) if isinstance(error, dict) else error)
    text = response.text.strip()
    return text or f"HTTP {response.status_code}"
