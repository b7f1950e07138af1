"""Stop strings: capped in number and length (a clear 400), found by a scanner that only ever
looks at the newly generated text, and still exact over a long generation on a real server."""

from __future__ import annotations

import random

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.engine import Chunk
from bridge.engine.sink import StopScanner, TokenSink
from bridge.wire.options import MAX_STOP_CHARS, MAX_STOPS

TOO_MANY = f'option "stop" has {MAX_STOPS + 1} strings; at most {MAX_STOPS} are allowed'
TOO_LONG = (f'option "stop": string 1 is {MAX_STOP_CHARS + 1} characters long; '
            f"at most {MAX_STOP_CHARS} are allowed")
MANY = [f"<never-{i}>" for i in range(MAX_STOPS + 1)]
LONG = ["\n\n", "x" * (MAX_STOP_CHARS + 1)]


def native(path: str, stop) -> dict:
    body = {"model": "tiny", "stream": False, "options": {"num_predict": 2, "stop": stop}}
    if path == "/api/generate":
        return {**body, "prompt": "hi"}
    return {**body, "messages": [{"role": "user", "content": "hi"}]}


# --- caps ------------------------------------------------------------------------------------


CAPPED = [pytest.param(MANY, TOO_MANY, id="many"), pytest.param(LONG, TOO_LONG, id="long")]


@pytest.mark.parametrize("path", ["/api/generate", "/api/chat"])
@pytest.mark.parametrize(("stop", "text"), CAPPED)
def test_too_many_or_too_long_stop_strings_are_a_400(client, path, stop, text):
    resp = client.post(path, json=native(path, stop))
    assert (resp.status_code, resp.get_json()) == (400, {"error": text})


@pytest.mark.parametrize(("stop", "text"), CAPPED)
def test_openai_stop_caps_have_the_openai_shape(client, stop, text):
    body = {"model": "tiny", "max_tokens": 2, "stop": stop,
            "messages": [{"role": "user", "content": "hi"}]}
    resp = client.post("/v1/chat/completions", json=body)
    assert resp.status_code == 400
    error = resp.get_json()["error"]
    assert (error["message"], error["type"]) == (text, "invalid_request_error")


def test_stop_strings_at_the_caps_are_served(client):
    stop = [f"{i:0{MAX_STOP_CHARS}d}" for i in range(MAX_STOPS)]
    resp = client.post("/api/generate", json=native("/api/generate", stop))
    assert resp.status_code == 200, resp.get_data()[:300]


# --- the scanner -----------------------------------------------------------------------------


class Pieces:
    """A detokenizer stand-in: token i decodes to pieces[i]."""

    def __init__(self, pieces: list[str]) -> None:
        self.pieces, self.out = pieces, ""

    def add_token(self, token: int) -> None:
        self.out += self.pieces[token]

    @property
    def last_segment(self) -> str:
        segment, self.out = self.out, ""
        return segment

    def finalize(self) -> None:
        pass


class Tokenizer:
    def __init__(self, pieces: list[str]) -> None:
        self.detokenizer = Pieces(pieces)
        self.eos_token_ids = [-1]


def run(pieces: list[str], stop: tuple[str, ...]) -> tuple[str, str, TokenSink]:
    """Feed every piece through a sink; returns (emitted text, done_reason, the sink)."""
    events: list = []
    sink = TokenSink(Tokenizer(pieces), events.append, prompt=[0], max_tokens=len(pieces),
                     stop=stop)
    for token in range(len(pieces)):
        if sink.add(token):
            break
    return "".join(e.text for e in events if isinstance(e, Chunk)), sink.final.done_reason, sink


def reference(text: str, stops: tuple[str, ...]) -> tuple[str, str]:
    """The text up to the stop string that ends first in the whole output (brute force)."""
    ends = [(text.find(s) + len(s), text.find(s)) for s in stops if s in text]
    if not ends:
        return text, "length"
    return text[: min(ends)[1]], "stop"


@settings(max_examples=300, deadline=None)
@given(pieces=st.lists(st.text("abc", max_size=4), min_size=1, max_size=40),
       stops=st.lists(st.text("abc", min_size=1, max_size=5), min_size=1, max_size=4))
def test_the_scanner_agrees_with_a_search_of_the_whole_output(pieces, stops):
    text, reason, _ = run(pieces, tuple(stops))
    assert (text, reason) == reference("".join(pieces), tuple(stops))


def test_the_scan_reads_only_the_new_text_and_holds_back_only_a_possible_stop():
    """A 200,000-character output against 32 stop strings of 256 characters, each a near miss:
    every token's text is scanned once, never the output, and at most 255 characters wait."""
    rng = random.Random(7)
    stops = tuple("ab" * 100 + "".join(rng.choice("ab") for _ in range(55)) + "c"
                  for _ in range(MAX_STOPS))
    pieces = ["".join(rng.choice("ab") for _ in range(4)) for _ in range(50_000)]
    scanned: list[int] = []
    feed = StopScanner.feed

    def spy(self, text):
        scanned.append(len(text))
        return feed(self, text)

    StopScanner.feed = spy
    try:
        events: list = []
        sink = TokenSink(Tokenizer(pieces), events.append, prompt=[0], max_tokens=len(pieces) + 1,
                         stop=stops)
        held = 0
        for token in range(len(pieces)):
            assert not sink.add(token)
            held = max(held, len(sink.pending))
    finally:
        StopScanner.feed = feed
    assert scanned == [4] * len(pieces)  # only each token's own text
    assert held <= MAX_STOP_CHARS - 1
    sink.finish("length")
    assert "".join(e.text for e in events if isinstance(e, Chunk)) == "".join(pieces)


def test_a_stop_string_split_over_many_tokens_with_a_false_start():
    text, reason, _ = run(["xa", "ba", "b", "abac", "yz"], ("ababac",))
    assert (text, reason) == ("xab", "stop")


# --- a long generation on a real server ------------------------------------------------------


def test_a_long_generation_stops_exactly_at_a_late_stop_string(server):
    """Greedy output is reproducible: cut it at a string from late in a 1500-token answer, with
    the other 31 allowed stop strings (256 characters each) never appearing."""
    body = {"model": "tiny", "prompt": "Once upon a time", "raw": True, "stream": False,
            "options": {"temperature": 0, "num_predict": 1500}}
    full = requests.post(server + "/api/generate", json=body, timeout=120).json()["response"]
    assert len(full) > 1500
    # the latest 8-character string that occurs only once, past the first 1000 characters
    stop = next(full[i:i + 8] for i in range(len(full) - 8, 1000, -1)
                if full.count(full[i:i + 8]) == 1 and "\ufffd" not in full[i:i + 8])
    cut_at = full.index(stop)
    others = [f"{i:0{MAX_STOP_CHARS}d}" for i in range(MAX_STOPS - 1)]
    body["options"]["stop"] = [*others, stop]
    out = requests.post(server + "/api/generate", json=body, timeout=120).json()
    assert out["done_reason"] == "stop"
    assert out["response"] == full[:cut_at]
