"""Open WebUI 0.12.4 against a real bridge process: its exact requests, replayed.

Each request below was recorded between Open WebUI 0.12.4 (run as a real server with
OLLAMA_BASE_URL pointing at a recording proxy in front of the bridge, driven in Chromium; see
docs/clients.md) and the bridge: method, path, headers (aiohttp's User-Agent, Content-Type) and
body. The chat body with Open WebUI's 36 built-in tools and the title task are stored whole
(tests/fixtures/openwebui_0124_*.json, model name swapped for the tiny model). Each test asserts
what the named open_webui function reads from the answer; Open WebUI itself is not needed.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
import requests

from bridge.testing import build_tiny_model

from .conftest import start_server, stop_server, write_mappings

FIXTURES = Path(__file__).parent / "fixtures"
TINY = "tiny:latest"
LONG = "tiny-long:latest"  # a 128k trained context: a generation that outlasts the test's probes
# What Open WebUI's aiohttp session sends with every backend call (utils/headers.py
# get_headers_and_cookies: Content-Type only; aiohttp adds its own User-Agent).
HEADERS = {"Content-Type": "application/json", "Accept": "*/*",
           "Accept-Encoding": "gzip, deflate, br", "User-Agent": "Python/3.11 aiohttp/3.14.5"}


@pytest.fixture(scope="module")
def bridges(tmp_path_factory):
    """(bridge, its upstream): the upstream is a second bridge (no upstream of its own) that
    serves only `tiny-up`, standing in for an Ollama that does not know the bridge's models."""
    models, cfg = tmp_path_factory.mktemp("owui-models"), tmp_path_factory.mktemp("owui-cfg")
    tiny = build_tiny_model(models / "tiny")
    long = build_tiny_model(models / "tiny-long", max_position_embeddings=1 << 17)
    up_map = write_mappings(cfg / "up.yaml", {"tiny-up": {"mlx": str(tiny), "backend": "mlx"}})
    up, up_url = start_server(["--mappings", str(up_map), "--upstream", "none",
                               "--home", str(tmp_path_factory.mktemp("owui-up-home"))])
    mappings = write_mappings(cfg / "m.yaml", {
        "tiny": {"mlx": str(tiny), "backend": "mlx"},
        "tiny-long": {"mlx": str(long), "backend": "mlx"},
    })
    proc, base = start_server(["--mappings", str(mappings), "--upstream", up_url,
                               "--home", str(tmp_path_factory.mktemp("owui-home"))])
    yield base, up_url
    stop_server(proc)
    stop_server(up)


@pytest.fixture(scope="module")
def url(bridges):
    return bridges[0]


def post(url: str, path: str, body: dict, *, method: str = "POST", stream: bool = False,
         timeout: float = 60) -> requests.Response:
    # Open WebUI serialises the body itself and posts bytes (routers/ollama.py send_request).
    return requests.request(method, url + path, data=json.dumps(body).encode(), headers=HEADERS,
                            stream=stream, timeout=timeout)


def test_model_list_and_loaded_models_parse_as_open_webui_reads_them(url):
    """routers/ollama.py get_all_models: GET /api/tags, `m['model']` for each model, then
    GET /api/ps and `datetime.fromisoformat(m['expires_at'])` for the loaded ones."""
    post(url, "/api/generate", {"model": TINY, "prompt": ""})  # loaded, so /api/ps lists it
    tags = requests.get(url + "/api/tags", headers=HEADERS, timeout=10).json()
    assert {TINY, LONG} <= {m["model"] for m in tags["models"]}
    ps = requests.get(url + "/api/ps", headers=HEADERS, timeout=10).json()
    loaded = {m["model"]: m for m in ps["models"]}
    assert TINY in loaded
    assert datetime.fromisoformat(loaded[TINY]["expires_at"]).timestamp() > time.time()
    # routers/ollama.py verify_connection / get_ollama_versions read `version`
    assert requests.get(url + "/api/version", headers=HEADERS, timeout=10).json()["version"]


def test_browser_chat_streams_ndjson_lines_open_webui_parses(url):
    """The chat sent from the browser: `stream: true` and 36 function tools, no options
    (utils/middleware.py reads each line: message.content, then done / done_reason)."""
    body = json.loads((FIXTURES / "openwebui_0124_chat.json").read_text())
    assert len(body["tools"]) == 36 and body["stream"] is True and "options" not in body
    with post(url, "/api/chat", body, stream=True) as resp:
        assert resp.status_code == 200
        assert resp.headers["Content-Type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in resp.iter_lines() if line]
    assert len(lines) >= 2 and all(line["message"]["role"] == "assistant" for line in lines)
    assert all(isinstance(line["message"]["content"], str) for line in lines)
    final = lines[-1]
    assert final["done"] is True and final["done_reason"] in ("stop", "length")
    assert final["prompt_eval_count"] > 0 and final["eval_count"] > 0


def test_title_task_answers_one_object(url):
    """routers/tasks.py generate_title: `stream: false`, options.num_predict 1000; the answer is
    one JSON object whose message.content Open WebUI parses for the title."""
    body = json.loads((FIXTURES / "openwebui_0124_title.json").read_text())
    assert body["stream"] is False and body["options"] == {"num_predict": 1000}
    resp = post(url, "/api/chat", body)
    assert resp.status_code == 200
    answer = resp.json()
    assert answer["done"] is True and isinstance(answer["message"]["content"], str)
    assert answer["eval_count"] <= 1000


def test_manage_models_pull_and_delete_answer_in_shapes_open_webui_shows(url):
    """Admin > Connections > Manage: routers/ollama.py pull_model sends name and model (the form
    is dumped with both) plus `insecure: true` and relays the NDJSON; delete_model sends only
    `model` and, on an error, shows the JSON `error` as the toast."""
    with post(url, "/api/pull", {"name": TINY, "model": TINY, "insecure": True},
              stream=True) as resp:
        assert resp.status_code == 200
        statuses = [json.loads(line).get("status") for line in resp.iter_lines() if line]
    assert statuses[-1] == "success"
    gone = post(url, "/api/delete", {"model": TINY}, method="DELETE")
    assert gone.status_code == 400 and "user's directory" in gone.json()["error"]


def test_embed_as_rag_sends_it(url):
    """retrieval/utils.py agenerate_ollama_batch_embeddings: POST /api/embed with a list input
    and `truncate: true`, reads `embeddings`; routers/ollama.py embeddings (legacy) reads
    `embedding`."""
    texts = ["The secret project codename is BLUEHERON.", "query1"]
    batch = post(url, "/api/embed", {"input": texts, "model": TINY, "truncate": True}).json()
    assert len(batch["embeddings"]) == 2 and all(isinstance(x, float)
                                                 for x in batch["embeddings"][0])
    legacy = post(url, "/api/embeddings", {"model": TINY, "prompt": "hi"}).json()
    assert len(legacy["embedding"]) == len(batch["embeddings"][0])


def _png() -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_image_to_a_text_model_is_a_quick_clear_400(url):
    """An image attached in the chat reaches /api/chat as `images` (base64, no data: prefix)
    beside Open WebUI's <attached_files> note; send_request turns a non-2xx `error` into the
    message shown in the chat, so it must be a prompt 400, not a hang."""
    content = ('<attached_files>\n<file type="file" id="x" url="x" content_type="image/png" '
               'name="red.png"/>\n</attached_files>\n\nWhat color is this image?')
    body = {"model": TINY, "stream": True,
            "messages": [{"role": "user", "content": content, "images": [_png()]}]}
    started = time.monotonic()
    resp = post(url, "/api/chat", body, timeout=30)
    assert resp.status_code == 400 and "does not support images" in resp.json()["error"]
    assert time.monotonic() - started < 5


def test_show_answers_the_name_and_model_form(url):
    """routers/ollama.py show_model_info posts {name, model} (both from ModelNameForm)."""
    show = post(url, "/api/show", {"name": TINY, "model": TINY}).json()
    assert {"details", "model_info", "capabilities", "template"} <= set(show)


def test_unload_of_an_idle_model_answers_unload(url):
    """routers/ollama.py unload_model (the model selector's eject): POST /api/generate with
    {model, keep_alive: 0, prompt: ""}; send_request is non-streamed and wants one object."""
    post(url, "/api/generate", {"model": TINY, "prompt": ""})
    answer = post(url, "/api/generate", {"model": TINY, "keep_alive": 0, "prompt": ""}).json()
    assert answer["done"] is True and answer["done_reason"] == "unload"
    ps = requests.get(url + "/api/ps", timeout=10).json()
    assert TINY not in {m["model"] for m in ps["models"]}


def test_unload_while_the_model_generates_answers_at_once(url):
    """Ollama (server/routes.go GenerateHandler) answers `done_reason: unload` at once and
    unloads when the model's requests end; Open WebUI's eject waits on this answer (up to
    AIOHTTP_CLIENT_TIMEOUT, 300 s), and a background title/follow-up task may run for minutes."""
    # Greedy decoding never meets the tiny model's EOS: it runs until num_ctx is full (minutes).
    body = {"model": LONG, "prompt": "count", "stream": True,
            "options": {"num_predict": 100000, "temperature": 0, "num_ctx": 65536}}
    started = threading.Event()
    stop = threading.Event()

    def generate() -> None:
        with post(url, "/api/generate", body, stream=True, timeout=120) as resp:
            for _ in resp.iter_lines():
                started.set()
                if stop.is_set():
                    return

    worker = threading.Thread(target=generate, daemon=True)
    worker.start()
    try:
        assert started.wait(60)
        began = time.monotonic()
        try:
            answer = post(url, "/api/generate", {"model": LONG, "keep_alive": 0, "prompt": ""},
                          timeout=5).json()
        except requests.Timeout:
            answer = {}
        took = time.monotonic() - began
    finally:
        stop.set()
        worker.join(30)
    assert answer["done_reason"] == "unload" and took < 3


@pytest.mark.parametrize("which", ["upstream answers 404", "no upstream"])
def test_copy_and_create_from_an_mlx_model_say_why_not_instead_of_not_found(bridges, which):
    """routers/ollama.py copy_model posts {source, destination} for a model /api/tags listed,
    and create_model relays the JSON typed under Manage > "Create a model" (its placeholder:
    {"model": "my-modelfile", "from": ...}); send_request shows the JSON `error` as the toast.
    The bridge only forwards these, so for an MLX model they answered `model 'tiny:latest' not
    found` (copy: the upstream's 404 relayed, or the bridge's own without an upstream) or
    named the new model as missing (create)."""
    url, name = (bridges[0], TINY) if which == "upstream answers 404" else (bridges[1],
                                                                            "tiny-up:latest")
    copy = post(url, "/api/copy", {"source": name, "destination": "tiny-copy"})
    create = post(url, "/api/create", {"model": "my-modelfile", "from": name, "stream": True})
    push = post(url, "/api/push", {"model": name, "stream": False})
    for resp, path in ((copy, "/api/copy"), (create, "/api/create"), (push, "/api/push")):
        assert resp.status_code == 400, (path, resp.text)
        error = resp.json()["error"]
        assert f"{path} is not supported for model '{name}'" in error and "MLX" in error
    # a name nobody serves is still Ollama's 404
    unknown = post(url, "/api/copy", {"source": "nobody-has-it", "destination": "x"})
    assert unknown.status_code == 404 and "not found" in unknown.json()["error"]


def test_an_idle_pooled_connection_is_still_served_seconds_later(url):
    """open_webui/utils/session_pool.py get_session: one shared aiohttp pool, whose connector
    keeps an idle connection 15 s and reuses it. The bridge closed idle connections after 5 s,
    so a request sent on a pooled connection just as it closed failed with `Server
    disconnected` (seen from Open WebUI's follow-up task, and with aiohttp after a 5.02 s
    pause). An idle connection must outlive the client's own keep-alive time."""
    import http.client

    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        for pause in (0, 6.5):  # 6.5 s: past the old 5 s limit and its once-a-second sweep
            time.sleep(pause)
            conn.request("POST", "/api/show", body=json.dumps({"model": TINY}), headers=HEADERS)
            resp = conn.getresponse()
            assert resp.status == 200 and json.loads(resp.read())["details"]
    finally:
        conn.close()
