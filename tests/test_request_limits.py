"""Hostile sizes against a real server: a non-streamed request whose client hangs up, num_ctx far
beyond the model, and a prompt as large as the body cap beside a normal chat.

The server maps `tiny` (trained context 2048) and `tiny-long` (128k, for a generation that would
run for a minute if nothing stopped it).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from urllib.parse import urlsplit

import pytest
import requests

from bridge.config import DEFAULT_MAX_BODY
from bridge.engine import PromptSpec
from bridge.engine.prepare import fit_context
from bridge.engine.prompts import prompt_tokens
from bridge.http.web import client_gone_probe, peer_closed
from bridge.serving.prompting import longest_token
from bridge.wire.options import Options

from .conftest import start_server, stop_server, write_mappings

TRAINED = 2048  # the tiny model's max_position_embeddings
LONG_TEXT = "hello world, the quick brown fox " * 600  # about 10,800 tokens


@pytest.fixture(scope="module")
def url(tmp_path_factory, tiny_model_dir, long_model_dir):
    root = tmp_path_factory.mktemp("request-limits")
    mappings = write_mappings(root / "m.yaml", {"tiny": {"mlx": str(tiny_model_dir)},
                                                "tiny-long": {"mlx": str(long_model_dir)}})
    proc, base = start_server(["--mappings", str(mappings), "--home", str(root / "home"),
                               "--upstream", "none"])
    yield base
    stop_server(proc)


def engine(url: str) -> dict:
    return requests.get(url + "/health", timeout=10).json()["engine"]


def wait_for(url: str, want, timeout: float) -> dict:
    """/health's engine once `want(engine)` holds (or the last one seen at the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        state = engine(url)
        if want(state) or time.monotonic() > deadline:
            return state
        time.sleep(0.05)


def generate(url: str, timeout: float = 60, **fields) -> requests.Response:
    return requests.post(url + "/api/generate", json={"model": "tiny", "stream": False, **fields},
                         timeout=timeout)


def short_chat(url: str) -> float:
    """Seconds a short non-streamed chat takes (it must succeed)."""
    began = time.monotonic()
    resp = requests.post(url + "/api/chat", timeout=120, json={
        "model": "tiny", "stream": False, "messages": [{"role": "user", "content": "hi"}],
        "options": {"num_predict": 4}})
    assert resp.status_code == 200, resp.text[:300]
    return time.monotonic() - began


# --- a non-streamed request whose client hangs up --------------------------------------------


def test_hanging_up_on_a_non_streamed_generation_cancels_it(url):
    """stream:false writes nothing until the end, so only watching the socket sees the hang-up."""
    short_chat(url)  # the model is loaded, the engine idle
    options = {"temperature": 0, "num_predict": 50000}
    body = json.dumps({"model": "tiny-long", "prompt": "The quick brown fox", "raw": True,
                       "stream": False, "options": options}).encode()
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port)) as sock:
        sock.sendall(b"POST /api/generate HTTP/1.1\r\nHost: %s\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                     % (parts.netloc.encode(), len(body), body))
        running = wait_for(url, lambda e: e["active"] == 1, timeout=30)
        assert running["active"] == 1, running
        time.sleep(0.5)
    hung_up = time.monotonic()
    # 50,000 tokens would take the tiny model about a minute
    idle = wait_for(url, lambda e: (e["active"], e["queued"]) == (0, 0), timeout=10)
    assert (idle["active"], idle["queued"]) == (0, 0), idle
    print(f"engine idle {time.monotonic() - hung_up:.2f} s after the hang-up")
    assert short_chat(url) < 3


def test_peer_closed_sees_only_an_end_of_file():
    ours, client = socket.socketpair()
    with ours, client:
        assert not peer_closed(ours)
        client.sendall(b"GET / HTTP/1.1\r\n")  # a pipelined request: not a hang-up, left unread
        assert not peer_closed(ours)
        assert ours.recv(64) == b"GET / HTTP/1.1\r\n"
        client.close()
        assert peer_closed(ours)


def test_without_a_client_socket_there_is_no_probe(app):
    """The Flask test client (in-process) gives no socket: hang-ups are noticed on write only."""
    with app.test_request_context("/api/generate", method="POST"):
        assert client_gone_probe() is None


# --- num_ctx beyond the model ----------------------------------------------------------------


def test_num_ctx_far_beyond_the_model_is_clamped_to_its_trained_context(url):
    options = {"temperature": 0, "num_ctx": 1e15}
    out = generate(url, prompt=LONG_TEXT, raw=True, options={**options, "num_predict": 4}).json()
    # truncated to the 2048-token window, leaving room for the 4 tokens asked for
    assert (out["prompt_eval_count"], out["eval_count"]) == (TRAINED - 4, 4), out
    refused = generate(url, prompt=LONG_TEXT, raw=True, truncate=False, options=options)
    assert refused.status_code == 400
    assert refused.json() == {"error": "the input length exceeds the context length"}
    # num_predict -2 fills the context: 2048 tokens, not 10**15
    full = generate(url, prompt="hi", raw=True, options={**options, "num_predict": -2}).json()
    assert full["prompt_eval_count"] + full["eval_count"] == TRAINED
    assert full["done_reason"] == "length"
    embed = requests.post(url + "/api/embed", timeout=60, json={
        "model": "tiny", "input": LONG_TEXT, "options": {"num_ctx": 1e15}}).json()
    assert embed["prompt_eval_count"] <= TRAINED, embed.get("prompt_eval_count")


def test_options_context():
    assert Options(num_ctx=10**15).context(2048) == 2048
    assert Options(num_ctx=512).context(2048) == 512
    assert Options().context(2048) == 2048  # 0: the model's own


# --- a prompt as large as the body cap -------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/generate", "/api/chat"])
def test_a_prompt_at_the_body_cap_does_not_stall_a_short_chat(url, path):
    """Tokenizing 32 MB took the engine thread half a minute; it is cut and tokenized on the
    request thread now, and the engine only prefills the last 2048 tokens."""
    text = "hello world, the quick brown fox " * ((DEFAULT_MAX_BODY - 4096) // 33)
    if path == "/api/generate":
        fields: dict = {"prompt": text}
    else:
        fields = {"messages": [{"role": "user", "content": text}]}
    body = json.dumps({"model": "tiny", "stream": False, "options": {"num_predict": 1},
                       **fields}).encode()
    assert DEFAULT_MAX_BODY - 8192 < len(body) <= DEFAULT_MAX_BODY
    short_chat(url)
    result: dict = {}

    def big() -> None:
        began = time.monotonic()
        resp = requests.post(url + path, data=body, timeout=300,
                             headers={"Content-Type": "application/json"})
        result.update(status=resp.status_code, body=resp.json(), seconds=time.monotonic() - began)

    sender = threading.Thread(target=big)
    sender.start()
    beside = []  # short chats, one after another, for as long as the big request runs
    while sender.is_alive() or len(beside) < 3:
        time.sleep(0.2)
        beside.append(short_chat(url))
    sender.join()
    print(f"short chats {[round(s, 2) for s in beside]} s beside the {len(body) >> 20} MiB "
          f"prompt ({result['seconds']:.1f} s)")
    assert result["status"] == 200, result
    assert result["body"]["prompt_eval_count"] < TRAINED
    assert max(beside) < 3


def test_the_cut_text_fills_the_window_with_the_same_tokens(tiny_model_dir):
    """The request thread keeps only the end of a huge prompt before tokenizing: what the window
    keeps afterwards is the same as when the whole text is tokenized."""
    from mlx_lm.utils import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    longest = longest_token(tokenizer)
    assert 0 < longest < 100
    spec = PromptSpec(messages=[{"role": "system", "content": "be brief"},
                                {"role": "user", "content": LONG_TEXT * 4}])
    options = Options(num_predict=16)
    whole = prompt_tokens(tokenizer, spec)
    cut = prompt_tokens(tokenizer, spec, max_chars=2 * (256 + 2) * longest)
    assert len(cut) < len(whole) // 10
    assert fit_context(cut, options, 256, True) == fit_context(whole, options, 256, True)
    with pytest.raises(Exception, match="exceeds the context length"):
        fit_context(cut, options, 256, False)  # still too long: the 400 stays right
