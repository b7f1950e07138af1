"""Slow clients (issue 11.8): requests are read on the worker's main loop, so clients that trickle
headers or a body, or never close, hold no request thread; they are answered 408 and closed once
MLX_BRIDGE_READ_TIMEOUT passes, and long responses are never cut.

Unit tests for the request framing (bridge/http/request_reader.py) and the deadline reads, then a
real server process with 150 hostile connections beside normal requests.
"""

from __future__ import annotations

import json
import socket
import time

import pytest
import requests

from bridge.http.deadline_reads import DeadlineReads
from bridge.http.request_reader import MAX_HEADER_BYTES, RequestBuffer, Verdict

from .conftest import start_server, stop_server, write_mappings
from .slow_util import KINDS, SHORT_CHAT, Trickle, timed

# ---- framing --------------------------------------------------------------------------------

HEAD = b"POST /api/chat HTTP/1.1\r\nHost: x\r\n"


def feed_bytewise(data: bytes, max_body: int = 1000) -> list[Verdict]:
    r = RequestBuffer(max_body)
    return [r.feed(data[i:i + 1]) for i in range(len(data))]


@pytest.mark.parametrize("request_bytes", [
    HEAD + b"Content-Length: 5\r\n\r\nhello",
    HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\n\r\n",
    HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n",
    b"GET /api/version HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /api/version HTTP/1.0\n\n",  # bare LF line ends
])
def test_ready_exactly_when_the_last_byte_arrives(request_bytes):
    verdicts = feed_bytewise(request_bytes)
    assert verdicts[-1] is Verdict.READY
    assert set(verdicts[:-1]) == {Verdict.MORE}


@pytest.mark.parametrize("headers,verdict", [
    # over the body cap: the app answers 413 (in the path's error shape) without reading it
    (b"Content-Length: 1001\r\n", Verdict.STREAM),
    # the worker answers these itself: no request thread waits for a body
    (b"Content-Length: 5\r\nContent-Length: 6\r\n", Verdict.BAD_FRAMING),
    (b"Content-Length: -1\r\n", Verdict.BAD_FRAMING),
    (b"Content-Length: " + b"1" * 5000 + b"\r\n", Verdict.BODY_TOO_LARGE),  # int() would raise
    (b"Transfer-Encoding: gzip\r\n", Verdict.UNSUPPORTED_CODING),
    (b"Transfer-Encoding: gzip, chunked\r\n", Verdict.UNSUPPORTED_CODING),
    (b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", Verdict.BAD_FRAMING),
])
def test_after_the_headers_when_there_is_nothing_to_wait_for(headers, verdict):
    assert RequestBuffer(1000).feed(HEAD + headers + b"\r\n") is verdict


def test_blob_uploads_stream_and_chunked_bodies_past_the_cap_are_refused_at_once():
    blob = b"POST /api/blobs/sha256:00 HTTP/1.1\r\nContent-Length: 10\r\n\r\n"
    assert RequestBuffer(1000).feed(blob) is Verdict.STREAM
    r = RequestBuffer(1000)
    assert r.feed(HEAD + b"Transfer-Encoding: chunked\r\n\r\n") is Verdict.MORE
    assert r.feed(b"200\r\n" + b"x" * 512 + b"\r\n") is Verdict.MORE
    assert r.feed(b"200\r\n") is Verdict.BODY_TOO_LARGE  # 1024 bytes announced: past the cap
    chunked = HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
    for bad in (b"zz\r\n", b"-2\r\n", b"0x2\r\n", b"\r\n", b"2\r\n{}XX0\r\n\r\n",
                b"f" * 5000):
        assert RequestBuffer(1000).feed(chunked + bad) is Verdict.BAD_FRAMING, bad
    assert RequestBuffer(1000).feed(chunked + b"f" * 19 + b"\r\n") is Verdict.BODY_TOO_LARGE


def test_pipelined_requests_are_complete_after_the_first():
    two = b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n"
    assert RequestBuffer(1000).feed(two) is Verdict.READY
    # the second one, read ahead with the first, starts the connection's next buffer
    assert RequestBuffer(1000, two[19:]).feed(b"") is Verdict.READY


def test_headers_too_large_and_expect_continue():
    r = RequestBuffer(1000)
    assert r.feed(HEAD + b"X: " + b"a" * MAX_HEADER_BYTES) is Verdict.HEADERS_TOO_LARGE
    r = RequestBuffer(1000)
    assert r.feed(HEAD + b"Expect: 100-continue\r\nContent-Length: 2\r\n\r\n") is Verdict.MORE
    assert r.expects_continue
    r = RequestBuffer(1000)
    assert r.feed(HEAD + b"Expect: 100-continue\r\nContent-Length: 0\r\n\r\n") is Verdict.READY


def test_a_trickled_header_is_scanned_in_linear_time():
    r = RequestBuffer(1000)
    start = time.perf_counter()
    r.feed(HEAD)
    for _ in range(60_000):
        r.feed(b"a")
    assert time.perf_counter() - start < 2  # quadratic rescanning takes minutes


def test_deadline_reads_time_out_and_grow_with_the_bytes_received():
    a, b = socket.socketpair()
    with a, b:
        reads = DeadlineReads(a)
        reads.limit(time.monotonic() + 0.2)
        b.send(b"x")
        assert reads.recv(10) == b"x"
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            reads.recv(10)  # nothing more comes: fails at the deadline
        assert time.monotonic() - start < 1
        reads.limit(time.monotonic() + 0.2, rate=1000)
        b.send(b"y" * 2000)
        assert len(reads.recv(4000)) == 2000
        time.sleep(0.5)  # past the base deadline, but 2000 bytes at 1000 bytes/s bought 2 s more
        b.send(b"z")
        assert reads.recv(10) == b"z"


# ---- a real server process ------------------------------------------------------------------

READ_TIMEOUT = 3
LONG = {"temperature": 0, "num_predict": 1900, "num_ctx": 2048}


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("slow")
    mappings = write_mappings(root / "m.yaml", {"tiny": {"mlx": str(tiny_model_dir)}})
    proc, url = start_server(["--mappings", str(mappings), "--home", str(root / "home"),
                              "--upstream", "none"],
                             env={"MLX_BRIDGE_READ_TIMEOUT": str(READ_TIMEOUT)})
    loaded = requests.post(url + "/api/chat", json=SHORT_CHAT, timeout=60)
    assert loaded.status_code == 200
    yield url
    stop_server(proc)


def assert_answers_promptly(url: str) -> None:
    took, version = timed("GET", url + "/api/version")
    assert not isinstance(version, Exception) and version.status_code == 200, version
    assert took < 2.5, f"/api/version took {took:.1f}s"
    took, chat = timed("POST", url + "/api/chat", json=SHORT_CHAT)
    assert not isinstance(chat, Exception) and chat.status_code == 200, chat
    assert took < 2.5, f"a short chat took {took:.1f}s"


@pytest.mark.parametrize("kind", KINDS)
def test_150_slow_clients_do_not_delay_others_and_are_closed(slow_server, kind):
    with Trickle(slow_server, kind, 150) as slow:
        time.sleep(1.5)  # every slow connection accepted and trickling
        assert_answers_promptly(slow_server)
        deadline = time.monotonic() + READ_TIMEOUT + 8
        while slow.still_open() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert slow.still_open() == 0, "slow connections left open"
        answers = {c.answer.split(b"\r\n", 1)[0] for c in slow.clients}
    expected = {"headers": b"HTTP/1.1 408 Request Timeout",
                "body": b"HTTP/1.1 408 Request Timeout",
                "oversized": b"HTTP/1.1 413 REQUEST ENTITY TOO LARGE",
                "no-close": b"HTTP/1.0 200 OK"}
    assert answers <= {expected[kind], b""}, answers  # b"": reset before the answer was read
    assert expected[kind] in answers
    assert_answers_promptly(slow_server)


def test_a_408_says_why_in_json(slow_server):
    with socket.create_connection(("127.0.0.1", int(slow_server.rsplit(":", 1)[1]))) as sock:
        sock.sendall(b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\n\r\n{")
        sock.settimeout(READ_TIMEOUT + 5)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert json.loads(body) == {"error": f"request not received within {READ_TIMEOUT} seconds "
                                         "(MLX_BRIDGE_READ_TIMEOUT)"}


def test_a_long_stream_outlives_the_read_timeout(slow_server):
    body = {"model": "tiny", "prompt": "The quick brown fox", "raw": True, "options": LONG}
    start = time.monotonic()
    lines = []
    with requests.post(slow_server + "/api/generate", json=body, stream=True, timeout=60) as resp:
        for i, line in enumerate(resp.iter_lines()):
            lines.append(json.loads(line))
            if i in (1, 50, 100):
                time.sleep(READ_TIMEOUT)  # a slow reader: the stream lasts past the read timeout
    assert time.monotonic() - start > 2 * READ_TIMEOUT
    assert len(lines) > 100 and lines[-1]["done"] is True and "error" not in lines[-1], lines[-1]


def raw_exchange(url: str, payload: list[bytes], pause: float = 0.0) -> bytes:
    """Send `payload` in pieces (pausing between them), then read until the server closes."""
    with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as sock:
        sock.settimeout(20)
        for piece in payload:
            sock.sendall(piece)
            time.sleep(pause)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_a_slow_but_timely_body_is_served(slow_server):
    body = json.dumps({**SHORT_CHAT, "stream": False}).encode()
    head = (f"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    pieces = [head] + [body[i:i + 20] for i in range(0, len(body), 20)]
    answer = raw_exchange(slow_server, pieces, pause=1.5 / len(pieces))
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["done"] is True


def test_chunked_body_pipelining_and_expect_continue(slow_server):
    body = json.dumps(SHORT_CHAT).encode()
    chunked = (b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
               + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")
    version = b"GET /api/version HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    answer = raw_exchange(slow_server, [chunked[:50], chunked[50:] + version], pause=0.3)
    assert answer.count(b"HTTP/1.1 200 OK") == 2, answer[:300]
    assert b'"version"' in answer
    expect = (f"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\n"
              f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", int(slow_server.rsplit(":", 1)[1]))) as sock:
        sock.settimeout(10)
        sock.sendall(expect)
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"  # before any body byte
        sock.sendall(body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 OK"), answer[:200]  # no second 100 Continue


@pytest.mark.parametrize("framing,status", [
    (b"Content-Length: " + b"1" * 5000 + b"\r\n\r\n{}", b"413"),  # killed the worker once
    (b"Transfer-Encoding: chunked\r\n\r\nffffffffffff\r\n{", b"413"),  # a chunk past the cap
    (b"Transfer-Encoding: gzip, chunked\r\n\r\n5\r\n{", b"501"),
    (b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", b"400"),  # was a 500
    (b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}XX0\r\n\r\n", b"400"),  # was a 500
])
def test_unservable_framing_is_answered_at_once_and_kept_open_by_no_one(slow_server, framing,
                                                                        status):
    """Answered by the worker before any body is waited for (these held a request thread for
    the whole read timeout, 64 of them every thread; the first killed the worker), while the
    client keeps its connection open and silent."""
    port = int(slow_server.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\n" + framing)
        sock.settimeout(READ_TIMEOUT / 2)
        started = time.monotonic()
        answer = sock.recv(4096)
        took = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 " + status), answer[:200]
    assert took < 2, f"answered after {took:.1f}s"
    assert "error" in json.loads(answer.partition(b"\r\n\r\n")[2])
    assert_answers_promptly(slow_server)


def test_a_chunk_arriving_in_pieces_counts_once_against_the_cap():
    """900 bytes in one chunk, received 10 at a time, under a 1000-byte cap: served, not 413."""
    body = HEAD + b"Transfer-Encoding: chunked\r\n\r\n384\r\n" + b"x" * 900 + b"\r\n0\r\n\r\n"
    verdicts = feed_bytewise(body)
    assert verdicts[-1] is Verdict.READY and set(verdicts[:-1]) == {Verdict.MORE}


def test_a_buffered_request_is_served_from_the_preload_and_the_rest_kept():
    """The parser reads the main loop's buffer through DeadlineReads (gunicorn's `unread` made
    a body's reading quadratic); what it leaves (a pipelined request) is handed back."""
    from gunicorn import http
    from gunicorn.config import Config
    from werkzeug.wsgi import LimitedStream


    body = b"x" * (3 << 20)
    first = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    second = b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n"
    a, b = socket.socketpair()
    with a, b:
        parser = http.get_parser(Config(), a, ("127.0.0.1", 1))
        reads = DeadlineReads(a)
        parser.unreader.sock = reads
        reads.preload(first + second)
        req = next(parser)
        assert req.path == "/a" and LimitedStream(req.body, len(body)).read() == body
        left = parser.unreader.take_buffered() + reads.take_buffered()
        assert left == second


def test_silent_connections_past_the_cap_make_room_for_real_clients(tmp_path, tiny_model_dir):
    """2,000 connections that never send a byte (more than the worker's ~1,850 slots): the
    oldest idle ones are closed, and a real request is answered within moments, not after
    the idle ones' read timeout (30 s here) while it waited in the kernel's backlog."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2_000
    if hard != resource.RLIM_INFINITY and hard < wanted + 200:
        pytest.skip(f"the open-files limit ({hard}) is too low for {wanted} sockets")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted + 200), hard))
    mappings = write_mappings(tmp_path / "m.yaml", {"tiny": {"mlx": str(tiny_model_dir)}})
    proc, url = start_server(["--mappings", str(mappings), "--home", str(tmp_path / "home"),
                              "--upstream", "none"])
    port = int(url.rsplit(":", 1)[1])
    silent: list[socket.socket] = []
    try:
        for _ in range(wanted):
            silent.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        time.sleep(1.5)  # accepted up to the cap; the rest wait in the backlog
        took, version = timed("GET", url + "/api/version")
        assert not isinstance(version, Exception) and version.status_code == 200, version
        assert took < 5, f"/api/version took {took:.1f}s behind {wanted} silent connections"
    finally:
        for sock in silent:
            sock.close()
        stop_server(proc)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_an_event_for_a_connection_closed_earlier_in_the_same_batch_is_ignored():
    """A stop closes idle kept-alive connections from the main loop; a readable event for one
    already taken by the same select() then reached gthread's handler, whose unregister of the
    closed socket (fd -1) raised and killed the worker (seen once in CI, at a SIGTERM)."""
    import collections
    import selectors

    from bridge.http.worker import BridgeWorker

    class Conn:  # hashable, as gunicorn's connections are
        def __init__(self, sock: socket.socket) -> None:
            self.sock, self.request = sock, None

    worker = object.__new__(BridgeWorker)  # only the state these handlers read
    worker.poller = selectors.DefaultSelector()
    worker.keepalived_conns = collections.deque()
    worker.lingering = set()
    a, b = socket.socketpair()
    b.close()
    a.close()  # fileno() is now -1, as after murder_keepalived(force=True)
    conn = Conn(a)
    worker.on_client_socket_readable(conn, a)  # raised ValueError: Invalid file descriptor: -1
    worker._on_readable(conn, a)
    worker._on_linger_readable(conn, a)
