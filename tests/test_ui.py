"""The Admin UI at /ui, driven in a real browser: Debian's chromium through Playwright.

Three real processes per module: a fake Hugging Face hub (tests/fakehub.py, slowed so a pull has a
visible progress), an upstream bridge that serves `tiny` and `up-only` on MLX and can pull
`tinypull` from the hub, and the bridge under test, which serves `tiny` on MLX, forwards everything
else to the upstream and has an admin token. Every check of an effect goes through the API.

Screenshots of each page go to $MLX_BRIDGE_UI_SHOTS when set (docs/ui/ for docs/ui.md), else to
a temporary directory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from bridge.testing import build_tiny_model

from .helpers import free_port, start_server, stop_server, wait_until, write_mappings

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="SKIPPED BROWSER TEST: Debian's chromium is not installed (.ci/run installs it)")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

TOKEN = "ui-test-secret"
REPO = "mlx-community/Tiny-Ui-Pull"
FAKEHUB = Path(__file__).with_name("fakehub.py")
PADDING = 24 * 1024 * 1024
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


def _padding(path: Path, size: int) -> None:
    """A valid safetensors file of one `size`-byte tensor: huggingface_hub reports a download's
    progress every 10 MiB, so a pull needs a file this big to show a bar that moves."""
    header = json.dumps({"pad": {"dtype": "U8", "shape": [size], "data_offsets": [0, size]}})
    header += " " * (-len(header) % 8)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(header)) + header.encode())
        f.truncate(8 + len(header) + size)


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> Iterator[str]:
    """A hub serving one MLX repo (24 MiB) in 64 KiB chunks 4 ms apart: a pull of ~2 s."""
    root = tmp_path_factory.mktemp("ui-hub")
    build_tiny_model(root / REPO)
    _padding(root / REPO / "padding.safetensors", PADDING)
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(FAKEHUB), str(root), str(port), "0.004"])
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return requests.get(url + "/api/models/x/y", timeout=1).status_code == 404
        except requests.ConnectionError:
            return False

    assert wait_until(up, timeout=20, interval=0.1)
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def servers(hub, tmp_path_factory, tiny_model_dir) -> Iterator[tuple[str, str]]:
    """(bridge url, upstream url)."""
    root = tmp_path_factory.mktemp("ui")
    other = build_tiny_model(root / "tiny-7", seed=7)
    up_map = write_mappings(root / "up.yaml", {
        "tiny": {"mlx": str(other), "backend": "mlx"},
        "up-only": {"mlx": str(other), "backend": "mlx"},
        "tinypull": {"mlx": REPO, "backend": "mlx"}})
    up, up_url = start_server(["--mappings", str(up_map), "--home", str(root / "up-home"),
                               "--upstream", "none"],
                              env={"HF_ENDPOINT": hub, "HF_HUB_OFFLINE": "0"})
    try:
        main_map = write_mappings(root / "main.yaml",
                                  {"tiny": {"mlx": str(tiny_model_dir), "backend": "mlx"}})
        proc, url = start_server(["--mappings", str(main_map), "--home", str(root / "home"),
                                  "--upstream", up_url], env={"MLX_BRIDGE_ADMIN_TOKEN": TOKEN})
    except BaseException:
        stop_server(up)
        raise
    yield url, up_url
    stop_server(proc)
    stop_server(up)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    where = os.environ.get("MLX_BRIDGE_UI_SHOTS")
    path = Path(where) if where else tmp_path_factory.mktemp("ui-shots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def page(browser, servers):
    """A fresh browser context (empty sessionStorage: no admin token) on the bridge's /ui."""
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def _open(page, url: str, name: str) -> None:
    page.goto(f"{url}/ui#{name}")
    page.wait_for_selector(f"main[data-page={name}]")


def _chat(url: str, model: str = "tiny") -> str:
    """One short chat through the API; the backend that answered (X-Bridge-Backend)."""
    r = requests.post(url + "/api/chat", timeout=60, json={
        "model": model, "messages": [{"role": "user", "content": "hi"}], "stream": False,
        "options": {"num_predict": 4}})
    assert r.status_code == 200, r.text
    return r.headers["X-Bridge-Backend"]


def _rows(url: str) -> list[dict]:
    r = requests.get(url + "/api/llm-backends", headers=ADMIN, timeout=10)
    assert r.status_code == 200
    return r.json()


def _use_token(page) -> None:
    page.get_by_label("Admin token").fill(TOKEN)
    page.get_by_role("button", name="Use", exact=True).click()
    page.wait_for_selector("#token-state:has-text('token set')")


def test_ui_is_served_offline_with_the_bridges_guards(servers):
    url, _ = servers
    assert requests.get(url + "/", timeout=5).text == "Ollama is running"
    page = requests.get(url + "/ui", timeout=5)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    # offline: every asset is the bridge's own (no CDN), and each one is served
    assets = re.findall(r'(?:src|href)="([^"#]+)"', page.text)
    assert assets and all(a.startswith("/ui/") or a.startswith("data:") for a in assets)
    for asset in (a for a in assets if a.startswith("/ui/")):
        assert requests.get(url + asset, timeout=5).status_code == 200, asset
    js = requests.get(url + "/ui/js/app.js", timeout=5)
    assert "javascript" in js.headers["Content-Type"]
    assert "http://" not in js.text and "https://" not in js.text
    # the same Host and CORS checks as the API
    assert requests.get(url + "/ui", headers={"Host": "evil.example"}, timeout=5).status_code == 403
    assert requests.get(url + "/api/ui/live", headers={"Origin": "https://evil.example"},
                        timeout=5).status_code == 403
    assert requests.get(url + "/ui/js/nope.js", timeout=5).status_code == 404
    bad = requests.get(url + "/api/ui/live?step=0", timeout=5)
    assert bad.status_code == 400 and "step" in bad.json()["error"]
    bad = requests.get(url + "/api/ui/live?windw=60", timeout=5)
    assert bad.status_code == 400 and "'windw'" in bad.json()["error"]
    assert requests.get(url + "/api/ui/models?all=1", timeout=5).status_code == 400


def test_models_page_lists_mlx_and_upstream_models(page, servers, shots):
    url, up_url = servers
    _open(page, url, "models")
    page.wait_for_selector("#models [data-model='up-only:latest']")
    table = page.locator("#models")
    mlx_row = table.locator("tr", has=page.locator("[data-model='tiny:latest']"))
    up_row = table.locator("tr", has=page.locator("[data-model='up-only:latest']"))
    assert mlx_row.locator(".badge").inner_text() == "mlx"
    assert "this bridge" in mlx_row.inner_text()
    assert up_row.locator(".badge").inner_text() == "ollama"
    assert up_url in up_row.inner_text()
    # the upstream's `tiny` is hidden behind the bridge's own: one row per name
    assert table.locator("[data-model='tiny:latest']").count() == 1
    page.screenshot(path=str(shots / "models.png"), full_page=True)
    # unload and load from the page; /api/ps says what the engine holds
    _chat(url)
    page.get_by_role("button", name="Refresh").click()
    page.get_by_role("button", name="Unload tiny:latest").click()
    assert wait_until(lambda: "tiny:latest" not in _ps(url), timeout=10)
    page.get_by_role("button", name="Load tiny:latest").click()
    assert wait_until(lambda: "tiny:latest" in _ps(url), timeout=20)
    page.get_by_role("button", name="Unload tiny:latest").wait_for()


def test_a_model_an_admin_row_sends_elsewhere_is_listed_as_remote(page, servers, httpserver):
    """A third Ollama endpoint (a plain HTTP server answering /api/tags and /api/ps) that only
    an admin row names: its model appears with that endpoint as where it lives."""
    url, _ = servers
    httpserver.expect_request("/api/tags").respond_with_json(
        {"models": [{"name": "far:7b", "model": "far:7b", "size": 4_000_000_000}]})
    httpserver.expect_request("/api/ps").respond_with_json({"models": [
        {"name": "far:7b", "size": 5_000_000_000, "expires_at": "2030-01-01T00:00:00Z"}]})
    remote = httpserver.url_for("/").rstrip("/")
    r = requests.post(url + "/api/llm-backends", headers=ADMIN, timeout=10, json={
        "model_name": "far:7b", "backend_type": "ollama", "endpoint_url": remote})
    assert r.status_code == 201
    try:
        listed = requests.get(url + "/api/ui/models", timeout=10).json()["models"]
        (far,) = [m for m in listed if m["name"] == "far:7b"]
        assert (far["kind"], far["where"], far["loaded"], far["memory"]) == (
            "remote", remote, True, 5_000_000_000)
        _open(page, url, "models")
        row = page.locator("#models tr", has=page.locator("[data-model='far:7b']"))
        row.wait_for()
        assert row.locator(".badge").inner_text() == "ollama (remote)"
        assert remote in row.inner_text() and "4.0 GB" in row.inner_text()
    finally:
        requests.delete(f"{url}/api/llm-backends/{r.json()['id']}", headers=ADMIN, timeout=10)


def _ps(url: str) -> set[str]:
    return {m["name"] for m in requests.get(url + "/api/ps", timeout=10).json()["models"]}


def test_admin_write_without_the_token_is_refused_with_a_visible_message(page, servers):
    url, _ = servers
    before = _rows(url)
    _open(page, url, "backends")
    page.wait_for_selector("#rows .error")  # the rows cannot even be read without the token
    page.get_by_label("Model name").fill("tiny")
    page.get_by_role("button", name="Create").click()
    notice = page.locator("#notice")
    notice.wait_for(state="visible")
    assert "Enter the admin token first" in notice.inner_text()
    assert "admin token" in notice.inner_text().split("first.", 1)[1]  # the server's words
    assert _rows(url) == before


def test_toggling_a_row_in_the_page_switches_who_serves_the_next_chat(page, servers, shots):
    url, up_url = servers
    r = requests.post(url + "/api/llm-backends", headers=ADMIN, timeout=10, json={
        "model_name": "tiny", "backend_type": "ollama", "enabled": False, "priority": 10,
        "description": "the upstream's tiny"})
    assert r.status_code == 201
    row = r.json()["id"]
    try:
        assert _chat(url) == "mlx"
        _open(page, url, "backends")
        _use_token(page)
        toggle = page.locator(f"button[data-toggle='{row}']")
        assert toggle.get_attribute("aria-pressed") == "false"
        toggle.click()
        page.wait_for_selector(f"button[data-toggle='{row}'][aria-pressed='true']")
        assert _chat(url) == f"ollama@{up_url}"
        page.wait_for_selector("#plans-table :text('ollama @')")
        page.screenshot(path=str(shots / "backends.png"), full_page=True)
        page.locator(f"button[data-toggle='{row}']").click()
        page.wait_for_selector(f"button[data-toggle='{row}'][aria-pressed='false']")
        assert _chat(url) == "mlx"
    finally:
        requests.delete(f"{url}/api/llm-backends/{row}", headers=ADMIN, timeout=10)


def test_rows_are_created_edited_and_deleted_from_the_page(page, servers):
    url, _ = servers
    _open(page, url, "backends")
    _use_token(page)
    page.get_by_label("Model name").fill("Up-Only")
    page.get_by_label("Backend type").select_option("ollama")
    page.get_by_label("Priority (higher first)").fill("3")
    page.get_by_label("Description").fill("made in the page")
    page.get_by_role("button", name="Create").click()
    page.wait_for_selector("#notice:has-text('created')")
    (row,) = [r for r in _rows(url) if r["model_name"].lower() == "up-only:latest"]
    name = row["model_name"]
    assert (row["backend_type"], row["priority"], row["enabled"]) == ("ollama", 3, True)
    assert row["description"] == "made in the page"
    page.get_by_role("button", name=f"Edit row {row['id']} ({name} ollama)").click()
    assert page.get_by_label("Priority (higher first)").input_value() == "3"
    page.get_by_label("Priority (higher first)").fill("7")
    page.get_by_role("button", name="Save").click()
    page.wait_for_selector(f"#notice:has-text('row {row['id']} saved')")
    assert requests.get(f"{url}/api/llm-backends/{row['id']}", headers=ADMIN,
                        timeout=10).json()["priority"] == 7
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name=f"Delete row {row['id']} ({name} ollama)").click()
    page.wait_for_selector("#notice:has-text('deleted')")
    assert all(r["id"] != row["id"] for r in _rows(url))


def test_live_charts_update_after_requests_without_a_reload(page, servers, shots):
    url, _ = servers
    _open(page, url, "live")
    figure = page.locator("#chart-requests_per_s")
    page.wait_for_selector("#chart-requests_per_s canvas")
    page.evaluate("window.__sameDocument = true")
    before = int(figure.get_attribute("data-requests"))
    for _ in range(3):
        _chat(url)
    page.wait_for_function(
        "n => Number(document.querySelector('#chart-requests_per_s').dataset.requests) >= n",
        arg=before + 3, timeout=15_000)
    assert page.evaluate("window.__sameDocument") is True  # updated in place, not reloaded
    assert int(page.locator("#chart-tokens_per_s").get_attribute("data-points")) > 0
    assert "tiny" in page.locator("#recent-table").inner_text()
    assert page.locator("#tiles").inner_text().count("Queue depth") == 1
    page.wait_for_selector("#health-table :text('MLX engine')")
    page.screenshot(path=str(shots / "live.png"), full_page=True)


def test_playground_streams_a_chat_and_names_the_backend(page, servers, shots):
    url, _ = servers
    _open(page, url, "playground")
    page.wait_for_selector("#pg-model option[value='tiny:latest']", state="attached")
    page.get_by_label("Model").select_option("tiny:latest")
    page.get_by_label("Max tokens").fill("12")
    page.get_by_label("Message (Ctrl+Enter sends)").fill("Say something")
    page.get_by_role("button", name="Send").click()
    page.wait_for_selector("#pg-metrics [data-metric='Generated tokens']")
    reply = page.locator(".msg.assistant .text")
    assert int(reply.get_attribute("data-chunks")) >= 3  # one NDJSON line per token, as streamed
    assert reply.inner_text().strip()
    assert page.locator("[data-metric='Served by']").inner_text() == "mlx"
    assert page.locator("[data-metric='Generated tokens']").inner_text() == "12"
    page.screenshot(path=str(shots / "playground.png"), full_page=True)


def test_pull_shows_progress_then_the_model_is_listed_and_deleted(page, servers, shots):
    url, _ = servers
    _open(page, url, "models")
    page.get_by_label("Pull a model").fill("tinypull")
    page.locator("#pull-start").click()
    # the bar moves: part of a file done (progress comes every 10 MiB of the 24 MiB file)
    page.wait_for_function("() => { const b = document.querySelector('#pull-progress');"
                           " return b.value > 0 && b.value < b.max; }", timeout=30_000)
    page.screenshot(path=str(shots / "pull.png"))
    page.wait_for_selector("#pull-status:has-text('tinypull: success')", timeout=60_000)
    assert int(page.locator("#pull-progress").get_attribute("data-updates")) >= 2
    tags = requests.get(url + "/api/tags", timeout=10).json()["models"]
    assert "tinypull:latest" in {m["name"] for m in tags}
    page.wait_for_selector("#models [data-model='tinypull:latest']")
    # delete (after the confirm dialog): the upstream's copy is gone
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete tinypull:latest").click()
    page.wait_for_selector("#notice:has-text('tinypull:latest deleted')")
    tags = requests.get(url + "/api/tags", timeout=10).json()["models"]
    assert "tinypull:latest" not in {m["name"] for m in tags}


def test_compare_page_shows_both_backends_of_a_model(page, servers, shots):
    url, up_url = servers
    r = requests.post(url + "/api/llm-backends", headers=ADMIN, timeout=10, json={
        "model_name": "tiny", "backend_type": "ollama", "priority": 10})
    try:
        assert _chat(url) == f"ollama@{up_url}"
    finally:
        requests.delete(f"{url}/api/llm-backends/{r.json()['id']}", headers=ADMIN, timeout=10)
    assert _chat(url) == "mlx"
    _open(page, url, "compare")
    card = page.locator("article[data-model='tiny:latest']")
    card.wait_for()
    labels = set(card.locator(".bar-label").all_inner_texts())
    assert labels == {"mlx", f"ollama@{up_url}"}
    page.screenshot(path=str(shots / "compare.png"), full_page=True)


def test_heavy_ui_polling_does_not_slow_other_requests(servers):
    """Many tabs polling the largest live window (3600 buckets) and the model table at once:
    /api/version and a short chat beside them still answer within a couple of seconds."""
    url, _ = servers
    t0 = time.monotonic()
    _chat(url)  # the model loaded; the time of a chat alone, for comparison
    alone_s = time.monotonic() - t0
    stop = time.monotonic() + 4
    pollers: list[threading.Thread] = []

    def poll(path: str) -> None:
        while time.monotonic() < stop:
            assert requests.get(url + path, timeout=30).status_code == 200

    for path in ("/api/ui/live?window=3600&step=1",) * 6 + ("/api/ui/models",) * 2:
        pollers.append(threading.Thread(target=poll, args=(path,)))
        pollers[-1].start()
    time.sleep(0.5)
    t0 = time.monotonic()
    assert requests.get(url + "/api/version", timeout=10).status_code == 200
    version_s = time.monotonic() - t0
    t0 = time.monotonic()
    _chat(url)
    chat_s = time.monotonic() - t0
    for thread in pollers:
        thread.join(30)
    print(f"chat alone={alone_s:.3f}s; beside ui polling: version={version_s:.3f}s "
          f"chat={chat_s:.3f}s")
    assert version_s < 2 and chat_s < 3, (version_s, chat_s)


def test_keyboard_and_a_narrow_window(browser, servers, shots):
    url, _ = servers
    context = browser.new_context(viewport={"width": 380, "height": 800})
    page = context.new_page()
    try:
        _open(page, url, "models")
        page.wait_for_selector("#models")
        # the page itself never scrolls sideways; wide tables scroll in their own box
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
        page.screenshot(path=str(shots / "narrow.png"), full_page=False)
        page.get_by_role("link", name="Live").focus()
        page.keyboard.press("Enter")
        page.wait_for_selector("main[data-page=live]")
        deadline = time.monotonic() + 5
        page.keyboard.press("Tab")
        while time.monotonic() < deadline and page.evaluate(
                "document.activeElement.closest('nav') !== null"):
            page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.id") == "admin-token"
    finally:
        context.close()


def test_the_skip_link_moves_the_focus_and_keeps_the_page(page, servers):
    """Tab then Enter on "Skip to content" from the Live page: the focus is on the page's main
    region and the page (and what its forms held) stays; the link's "#main" used to route to
    the Models page."""
    url, _ = servers
    _open(page, url, "live")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"
    page.keyboard.press("Enter")
    assert page.evaluate("location.hash") == "#live"
    assert page.evaluate("document.activeElement.id") == "main"
    assert page.get_attribute("main", "data-page") == "live"
