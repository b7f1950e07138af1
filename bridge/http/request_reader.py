"""Where an HTTP/1 request ends, found in the bytes received so far (no sockets, no blocking).

The worker (bridge/http/worker.py) reads each request on its main loop, without a thread, and
hands the connection to a request thread only once this says the request is all there. It only
frames the request (end of the header block, Content-Length or chunked framing); gunicorn's
parser still validates everything when the thread parses the buffered bytes. Framing that
cannot be served (a malformed chunk, an unsupported transfer coding, a body past the cap) is a
verdict the worker answers itself, at once: no request thread waits for a body that may never
come.

>>> r = RequestBuffer(max_body=100)
>>> r.feed(b"POST /api/chat HTTP/1.1\\r\\nContent-Length: 5\\r\\n\\r\\nab")
<Verdict.MORE: 'more'>
>>> r.feed(b"cde")
<Verdict.READY: 'ready'>
>>> RequestBuffer(max_body=100).feed(b"GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
<Verdict.READY: 'ready'>
>>> blob = b"POST /api/blobs/x HTTP/1.1\\r\\nContent-Length: 9\\r\\n\\r\\n"
>>> RequestBuffer(max_body=100).feed(blob)
<Verdict.STREAM: 'stream'>
"""

from __future__ import annotations

import enum

MAX_HEADER_BYTES = 64 * 1024  # nginx's default allows 32 KiB; a longer header block is refused
STREAMED_PREFIXES = (b"/api/blobs/",)  # model files streamed to the upstream, never buffered
_MAX_CHUNK_LINE = 4096
_MAX_LENGTH_DIGITS = 18  # more digits than any body this side of an exabyte (and int() limits)


class Verdict(enum.Enum):
    MORE = "more"  # keep reading
    READY = "ready"  # the whole request (headers and body) is buffered
    STREAM = "stream"  # headers complete; hand over now, the body is read by the request thread
    HEADERS_TOO_LARGE = "headers too large"
    # Answered by the worker at once, the connection then closed: handing these to a request
    # thread would leave it waiting for a body that may never come.
    BODY_TOO_LARGE = "body too large"  # 413: a chunked body past the cap, an absurd length
    BAD_FRAMING = "bad framing"  # 400: a malformed chunk, both framings, a duplicated length
    UNSUPPORTED_CODING = "unsupported transfer coding"  # 501: anything but plain `chunked`


class RequestBuffer:
    """The bytes of one request as they arrive, and whether they are complete yet."""

    def __init__(self, max_body: int, initial: bytes = b"") -> None:
        self.max_body = max_body
        self.data = bytearray(initial)
        self.body_start = -1  # index after the header block, once found
        self.expects_continue = False  # `Expect: 100-continue` with a body still to come
        self._length: int | None = None  # Content-Length, when the body has one
        self._chunked = False
        self._chunk_pos = 0  # where the next chunk-size line starts (chunked bodies)
        self._chunk_total = 0
        self._counted = -1  # the chunk whose size _chunk_total already holds
        self._trailer_scan = 0
        self._scan = 0  # the header block's end is searched for from here on

    def feed(self, chunk: bytes) -> Verdict:
        """Add received bytes; what to do with the connection now."""
        self.data += chunk
        if self.body_start < 0:
            end = _header_end(self.data, self._scan)
            if end < 0:
                self._scan = max(0, len(self.data) - 3)  # a blank line may straddle two chunks
                too_big = len(self.data) > MAX_HEADER_BYTES
                return Verdict.HEADERS_TOO_LARGE if too_big else Verdict.MORE
            self.body_start = end
            early = self._read_headers(bytes(self.data[:end]))
            if early is not None:
                return early
        if self._chunked:
            return self._chunks()
        if self._length is not None and len(self.data) - self.body_start < self._length:
            return Verdict.MORE
        return Verdict.READY

    def _read_headers(self, block: bytes) -> Verdict | None:
        """Note the framing; a verdict when no more body needs to be waited for here."""
        lines = block.replace(b"\r\n", b"\n").split(b"\n")
        request_line = lines[0].split()
        target = request_line[1] if len(request_line) > 1 else b""
        version = request_line[2] if len(request_line) > 2 else b""
        lengths: list[bytes] = []
        codings: list[bytes] = []
        expect = b""
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip()
            if name == b"content-length":
                lengths.append(value)
            elif name == b"transfer-encoding":
                codings.append(value.lower())
            elif name == b"expect":
                expect = value.lower()
        if codings:
            if lengths:
                return Verdict.BAD_FRAMING  # both: how a request smuggles another
            if codings != [b"chunked"]:
                return Verdict.UNSUPPORTED_CODING
            self._chunked, self._chunk_pos = True, self.body_start
        elif lengths:
            if len(lengths) != 1 or not lengths[0].isdigit():
                return Verdict.BAD_FRAMING
            if len(lengths[0]) > _MAX_LENGTH_DIGITS:
                return Verdict.BODY_TOO_LARGE
            self._length = int(lengths[0])
            if self._length == 0:
                return Verdict.READY
            if self._length > self.max_body:
                return Verdict.STREAM  # the app answers 413 without reading it
        else:
            return Verdict.READY  # a request without either has no body
        if target.startswith(STREAMED_PREFIXES):
            return Verdict.STREAM
        self.expects_continue = expect == b"100-continue" and version == b"HTTP/1.1"
        return None

    def _chunks(self) -> Verdict:
        """Walk the chunk framing received so far: READY after the last chunk and trailers."""
        while True:
            line_end = self.data.find(b"\r\n", self._chunk_pos)
            if line_end < 0:
                too_long = len(self.data) - self._chunk_pos > _MAX_CHUNK_LINE
                return Verdict.BAD_FRAMING if too_long else Verdict.MORE
            size_text = bytes(self.data[self._chunk_pos:line_end]).split(b";", 1)[0].strip()
            if not size_text or size_text.strip(b"0123456789abcdefABCDEF"):
                return Verdict.BAD_FRAMING  # not hex digits ("-2", "0x2", "zz")
            if len(size_text) > _MAX_LENGTH_DIGITS:
                return Verdict.BODY_TOO_LARGE
            size = int(size_text, 16)
            if size == 0:
                return self._trailers(line_end + 2)
            if self._counted != self._chunk_pos:  # each chunk once, however many reads it takes
                self._counted = self._chunk_pos
                self._chunk_total += size
            if self._chunk_total > self.max_body:
                return Verdict.BODY_TOO_LARGE
            following = line_end + 2 + size + 2  # the data and its CRLF
            if len(self.data) < following:
                return Verdict.MORE
            if self.data[following - 2:following] != b"\r\n":
                return Verdict.BAD_FRAMING  # the chunk is longer than its size said
            self._chunk_pos = following

    def _trailers(self, start: int) -> Verdict:
        if self.data[start:start + 2] == b"\r\n":
            return Verdict.READY
        if self.data.find(b"\r\n\r\n", max(start, self._trailer_scan)) >= 0:
            return Verdict.READY
        self._trailer_scan = max(start, len(self.data) - 3)
        too_big = len(self.data) - start > MAX_HEADER_BYTES
        return Verdict.HEADERS_TOO_LARGE if too_big else Verdict.MORE


def _header_end(data: bytearray, start: int) -> int:
    """The index just after the blank line ending the header block; -1 while it is incomplete.

    Searching from `start` (where the previous chunk ended) keeps a trickled header linear.
    """
    crlf = data.find(b"\r\n\r\n", start)
    lf = data.find(b"\n\n", start)
    ends = [i + 4 for i in (crlf,) if i >= 0] + [i + 2 for i in (lf,) if i >= 0]
    return min(ends) if ends else -1
