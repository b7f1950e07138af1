"""Vision on MLX: a tiny Qwen2-VL (bridge.testing_vision) served through mlx-vlm by a real server.

One server process for the module, with the tiny VLM and the tiny text model mapped. Greedy
decoding (temperature 0) makes outputs comparable: the same image and text give the same answer
through every protocol, a different image a different one (the image reaches the model).
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from bridge.testing import build_tiny_model
from bridge.testing_vision import build_tiny_gemma3_vlm, build_tiny_vlm

from .conftest import start_server, stop_server, write_mappings
from .service_util import clean_env, mlx_bridge

VLM = "tiny-vlm"
GEMMA3 = "tiny-gemma3"
PROC_ONLY = "tiny-vlm-processor-template"
TEXT = "tiny-text"
GREEDY = {"temperature": 0, "num_predict": 8}
QUESTION = "What is in the image?"


def png(seed: int, size: int = 64) -> bytes:
    """A noise image (different seeds: different pictures) as PNG bytes."""
    pixels = (np.random.RandomState(seed).rand(size, size, 3) * 255).astype("uint8")
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


IMG_A, IMG_B, IMG_C = png(1), png(2), png(3)


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vision")
    vlm = build_tiny_vlm(root / "vlm", max_position_embeddings=8192)
    # The same model with its template only in the processor's chat_template.json, as many
    # vision checkpoints ship it.
    proc_only = root / "vlm-processor-template"
    shutil.copytree(vlm, proc_only)
    tok_cfg = json.loads((proc_only / "tokenizer_config.json").read_text())
    del tok_cfg["chat_template"]
    (proc_only / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    return {"vlm": vlm, "proc_only": proc_only,
            "gemma3": build_tiny_gemma3_vlm(root / "gemma3"),
            "text": build_tiny_model(root / "text"), "root": root}


@pytest.fixture(scope="module")
def url(paths):
    root = paths["root"]
    mappings = write_mappings(root / "map.yaml", {
        VLM: {"mlx": str(paths["vlm"]), "backend": "mlx"},
        GEMMA3: {"mlx": str(paths["gemma3"]), "backend": "mlx"},
        PROC_ONLY: {"mlx": str(paths["proc_only"]), "backend": "mlx"},
        TEXT: {"mlx": str(paths["text"]), "backend": "mlx"},
    })
    env = {"MLX_BRIDGE_MAX_IMAGES": "4", "MLX_BRIDGE_MAX_IMAGE_BYTES": "60000"}
    proc, base = start_server(["--mappings", str(mappings), "--home", str(root / "home"),
                               "--upstream", "none"], env=env)
    yield base
    stop_server(proc)


def chat(url: str, messages: list[dict], model: str = VLM, **extra) -> requests.Response:
    body = {"model": model, "messages": messages, "stream": False, "options": GREEDY, **extra}
    return requests.post(url + "/api/chat", json=body, timeout=60)


def ask(url: str, *images: bytes, text: str = QUESTION, model: str = VLM) -> dict:
    resp = chat(url, [{"role": "user", "content": text, "images": [b64(i) for i in images]}],
                model=model)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_capabilities_list_vision(url):
    shown = requests.post(url + "/api/show", json={"model": VLM}, timeout=10).json()
    assert "vision" in shown["capabilities"] and "completion" in shown["capabilities"]
    text = requests.post(url + "/api/show", json={"model": TEXT}, timeout=10).json()
    assert "vision" not in text["capabilities"]
    tags = {m["name"]: m for m in requests.get(url + "/api/tags", timeout=10).json()["models"]}
    assert "vision" in tags[f"{VLM}:latest"]["capabilities"]


def test_cli_show_lists_vision(url):
    shown = mlx_bridge("show", VLM, env=clean_env(MLX_BRIDGE_HOST=url))
    assert shown.returncode == 0, shown.stderr
    assert "vision" in shown.stdout.split("Capabilities", 1)[1]


def test_the_image_reaches_the_model(url):
    """Same text, different images: different answers; the same image again: the same answer
    (also after another image ran: no prefix of one image's prompt serves another's)."""
    a, b, a_again = ask(url, IMG_A), ask(url, IMG_B), ask(url, IMG_A)
    assert a["message"]["content"] != b["message"]["content"]
    assert a["message"]["content"] == a_again["message"]["content"]
    assert a["eval_count"] > 0 and a["prompt_eval_count"] == b["prompt_eval_count"]


def test_a_second_architecture_gemma3(url):
    """Gemma 3 (SigLIP tower, image tokens placed by its processor, sliding-window layers):
    the image reaches the model, answers repeat, text-only works, capabilities say vision."""
    a, b = ask(url, IMG_A, model=GEMMA3), ask(url, IMG_B, model=GEMMA3)
    assert (a["message"]["content"], a["eval_count"]) != (b["message"]["content"],
                                                           b["eval_count"])
    assert ask(url, IMG_A, model=GEMMA3)["message"]["content"] == a["message"]["content"]
    assert ask(url, IMG_A, IMG_B, model=GEMMA3)["prompt_eval_count"] \
        > a["prompt_eval_count"]
    text = chat(url, [{"role": "user", "content": "hello"}], model=GEMMA3)
    assert text.status_code == 200, text.text
    shown = requests.post(url + "/api/show", json={"model": GEMMA3}, timeout=10).json()
    assert "vision" in shown["capabilities"]


def test_stream_equals_non_stream(url):
    whole = ask(url, IMG_B)
    body = {"model": VLM, "stream": True, "options": GREEDY,
            "messages": [{"role": "user", "content": QUESTION, "images": [b64(IMG_B)]}]}
    with requests.post(url + "/api/chat", json=body, stream=True, timeout=60) as resp:
        lines = [json.loads(line) for line in resp.iter_lines() if line]
    assert lines[-1]["done"] is True and lines[-1]["eval_count"] == whole["eval_count"]
    assert "".join(line["message"]["content"] for line in lines) == whole["message"]["content"]


def test_several_images_per_message_and_across_messages(url):
    one, two = ask(url, IMG_A), ask(url, IMG_A, IMG_B)
    per_image = two["prompt_eval_count"] - one["prompt_eval_count"]
    assert per_image == 6  # 56x56 pixels: 4 image tokens, plus the start and end markers
    history = [{"role": "user", "content": "first", "images": [b64(IMG_C)]},
               {"role": "assistant", "content": "a picture"},
               {"role": "user", "content": QUESTION, "images": [b64(IMG_A), b64(IMG_B)]}]
    resp = chat(url, history)
    assert resp.status_code == 200, resp.text
    assert resp.json()["prompt_eval_count"] > two["prompt_eval_count"] + per_image


def test_images_on_a_tool_result_count_and_on_an_assistant_turn_are_400(url):
    """A tool's screenshot reaches the model; an assistant turn cannot carry images (mlx-vlm
    places image tokens on user turns), which is said rather than dropped."""
    base = [{"role": "user", "content": "look"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"function": {"name": "shot", "arguments": {}}}]}]
    plain = chat(url, [*base, {"role": "tool", "content": "done", "tool_name": "shot"}])
    shot = chat(url, [*base, {"role": "tool", "content": "done", "tool_name": "shot",
                              "images": [b64(IMG_A)]}])
    assert plain.status_code == 200 and shot.status_code == 200, (plain.text, shot.text)
    assert shot.json()["prompt_eval_count"] == plain.json()["prompt_eval_count"] + 6
    bad = chat(url, [{"role": "user", "content": "hi"},
                     {"role": "assistant", "content": "x", "images": [b64(IMG_A)]}])
    assert bad.status_code == 400 and "not on 'assistant'" in bad.json()["error"], bad.text


def test_all_four_flavours_take_the_image(url):
    """/api/generate, /v1/chat/completions, /v1/messages and /v1/responses render the same
    prompt for one user turn with one image: greedy, they answer what /api/chat answers."""
    expected = ask(url, IMG_C)["message"]["content"]
    gen = requests.post(url + "/api/generate", json={
        "model": VLM, "prompt": QUESTION, "images": [b64(IMG_C)], "stream": False,
        "options": GREEDY}, timeout=60)
    assert gen.status_code == 200, gen.text
    assert gen.json()["response"] == expected
    data_url = "data:image/png;base64," + b64(IMG_C)
    oai = requests.post(url + "/v1/chat/completions", json={
        "model": VLM, "max_tokens": 8, "temperature": 0, "messages": [{"role": "user", "content": [
            {"type": "text", "text": QUESTION},
            {"type": "image_url", "image_url": {"url": data_url}}]}]}, timeout=60)
    assert oai.status_code == 200, oai.text
    assert oai.json()["choices"][0]["message"]["content"] == expected
    ant = requests.post(url + "/v1/messages", json={
        "model": VLM, "max_tokens": 8, "temperature": 0, "messages": [{"role": "user", "content": [
            {"type": "text", "text": QUESTION},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": b64(IMG_C)}}]}]}, timeout=60)
    assert ant.status_code == 200, ant.text
    assert "".join(b["text"] for b in ant.json()["content"] if b["type"] == "text") == expected
    rsp = requests.post(url + "/v1/responses", json={
        "model": VLM, "max_output_tokens": 8, "temperature": 0, "input": [{"role": "user",
            "content": [{"type": "input_text", "text": QUESTION},
                        {"type": "input_image", "image_url": data_url}]}]}, timeout=60)
    assert rsp.status_code == 200, rsp.text
    out = rsp.json()["output"]
    assert "".join(p["text"] for o in out if o["type"] == "message" for p in o["content"]) \
        == expected


def test_generate_images_need_the_chat_template(url):
    """`raw` / `template` prompts have no place for the model's image markers: a clear 400."""
    for extra in ({"raw": True}, {"template": "{{ .Prompt }}"}):
        resp = requests.post(url + "/api/generate", json={
            "model": VLM, "prompt": QUESTION, "images": [b64(IMG_A)], "stream": False, **extra},
            timeout=30)
        assert resp.status_code == 400 and "chat template" in resp.json()["error"], resp.text


def test_text_only_to_a_vlm(url):
    resp = chat(url, [{"role": "user", "content": "hello there"}])
    assert resp.status_code == 200, resp.text
    assert resp.json()["eval_count"] > 0
    gen = requests.post(url + "/api/generate", json={"model": VLM, "prompt": "hello",
                                                     "stream": False, "options": GREEDY},
                        timeout=60)
    assert gen.status_code == 200 and gen.json()["eval_count"] > 0, gen.text


def test_a_context_with_image_placeholders_is_a_400_with_or_without_new_images(url):
    """An answer about an image returns a `context` holding its placeholders; continuing it
    without the pixels was generated over empty placeholders when the follow-up had no images
    (it takes the text path): a 400 either way now, as docs/vision.md says."""
    first = requests.post(url + "/api/generate", timeout=60, json={
        "model": VLM, "prompt": QUESTION, "images": [b64(IMG_A)], "stream": False,
        "options": GREEDY})
    assert first.status_code == 200, first.text
    context = first.json()["context"]
    for extra in ({}, {"images": [b64(IMG_B)]}):
        resp = requests.post(url + "/api/generate", timeout=60, json={
            "model": VLM, "prompt": "more", "context": context, "stream": False, **extra})
        assert resp.status_code == 400, (extra, resp.text)
        assert "context holds image placeholders" in resp.json()["error"]


def test_a_template_only_in_chat_template_json_is_used_for_text(url):
    """Text-only prompts go through the tokenizer, which does not read chat_template.json: the
    bridge gives it that template, so the answer is the one the template-in-tokenizer copy gives
    (and the same with an image, which the processor renders)."""
    for images in ([], [IMG_A]):
        msgs = [{"role": "user", "content": "hello there", "images": [b64(i) for i in images]}]
        same, other = chat(url, msgs), chat(url, msgs, model=PROC_ONLY)
        assert same.status_code == other.status_code == 200, (same.text, other.text)
        assert same.json()["prompt_eval_count"] == other.json()["prompt_eval_count"]
        assert same.json()["message"]["content"] == other.json()["message"]["content"]


NOT_AN_IMAGE = b64(b"this is plain text, not a picture")
BIG = png(4, size=200)  # noise does not compress: over the server's 60000-byte cap


def bomb() -> bytes:
    """A few kilobytes of PNG that decode to 49 million pixels."""
    out = io.BytesIO()
    Image.new("1", (7000, 7000)).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize(("images", "needle"), [
    (["%%%not base64%%%"], "illegal base64"),
    ([NOT_AN_IMAGE], "is not a valid image"),
    ([b64(BIG)], "image too large"),
    ([b64(bomb())], "7000x7000 pixels (the limit"),
    ([b64(IMG_A)] * 5, "too many images"),
])
def test_bad_images_are_400_native(url, images, needle):
    resp = chat(url, [{"role": "user", "content": QUESTION, "images": images}])
    assert resp.status_code == 400 and needle in resp.json()["error"], resp.text
    gen = requests.post(url + "/api/generate", json={"model": VLM, "prompt": "x",
                                                     "images": images, "stream": False},
                        timeout=30)
    assert gen.status_code == 400 and needle in gen.json()["error"], gen.text


@pytest.mark.parametrize(("model", "text"), [
    (VLM, "<|image_pad|><|image_pad|> two placeholders, one image"),
    (GEMMA3, "<start_of_image> a typed marker, one image"),
])
def test_typed_image_placeholders_are_a_400_not_a_5xx(url, model, text):
    """A user who types the model's image marker asks for more images than were sent."""
    resp = chat(url, [{"role": "user", "content": text, "images": [b64(IMG_A)]}], model=model)
    assert resp.status_code == 400 and "rejected the input" in resp.json()["error"], resp.text
    assert ask(url, IMG_A, model=model)["eval_count"] > 0  # and the model serves the next one


def test_large_images_are_shrunk_on_decoding():
    """Decoded images are held at most 2048 on a side (aspect kept) until the engine runs."""
    from bridge.serving.images import MAX_SIDE, decode_image

    out = io.BytesIO()
    Image.new("RGB", (5000, 3000), (200, 10, 10)).save(out, format="JPEG")
    image = decode_image(b64(out.getvalue()), "images[0]")
    assert image.mode == "RGB" and max(image.size) == MAX_SIDE
    assert abs(image.size[0] / image.size[1] - 5 / 3) < 0.01
    assert decode_image(b64(IMG_A), "images[0]").size == (64, 64)


def test_bad_images_are_400_in_each_protocol_shape(url):
    bad = "data:image/png;base64," + NOT_AN_IMAGE
    oai = requests.post(url + "/v1/chat/completions", json={"model": VLM, "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": bad}}]}]},
        timeout=30)
    assert oai.status_code == 400
    assert "is not a valid image" in oai.json()["error"]["message"]
    assert oai.json()["error"]["type"] == "invalid_request_error"
    ant = requests.post(url + "/v1/messages", json={"model": VLM, "max_tokens": 8, "messages": [
        {"role": "user", "content": [{"type": "image", "source": {
            "type": "base64", "media_type": "image/png", "data": NOT_AN_IMAGE}}]}]}, timeout=30)
    assert ant.status_code == 400 and ant.json()["type"] == "error"
    assert "is not a valid image" in ant.json()["error"]["message"]
    rsp = requests.post(url + "/v1/responses", json={"model": VLM, "input": [{"role": "user",
        "content": [{"type": "input_image", "image_url": bad}]}]}, timeout=30)
    assert rsp.status_code == 400 and "is not a valid image" in rsp.json()["error"]["message"]


def test_text_model_still_refuses_images(url):
    resp = chat(url, [{"role": "user", "content": "hi", "images": [b64(IMG_A)]}], model=TEXT)
    assert resp.status_code == 400
    assert resp.json()["error"] == f'"{TEXT}" does not support images'


def test_embeddings_on_a_vlm_are_a_clear_400(url):
    resp = requests.post(url + "/api/embed", json={"model": VLM, "input": "hello"}, timeout=30)
    assert resp.status_code == 400
    assert "vision model" in resp.json()["error"]


def test_ps_and_metrics_show_the_vlm(url):
    done = ask(url, IMG_A)
    models = {m["name"]: m for m in requests.get(url + "/api/ps", timeout=10).json()["models"]}
    assert models[f"{VLM}:latest"]["size"] > 0 and models[f"{VLM}:latest"]["size_vram"] >= 0
    metrics = requests.get(url + "/metrics", timeout=10).text
    assert f'mlx_bridge_loaded_model_bytes{{model="{VLM}:latest"}}' in metrics
    eval_line = next(line for line in metrics.splitlines()
                     if line.startswith("mlx_bridge_eval_tokens_total")
                     and f'"{VLM}:latest"' in line)
    assert float(eval_line.rsplit(" ", 1)[1]) >= done["eval_count"]


def test_keep_alive_zero_unloads_the_vlm(url):
    resp = chat(url, [{"role": "user", "content": QUESTION, "images": [b64(IMG_C)]}],
                keep_alive=0)
    assert resp.status_code == 200, resp.text
    names = [m["name"] for m in requests.get(url + "/api/ps", timeout=10).json()["models"]]
    assert f"{VLM}:latest" not in names


def test_format_and_token_count_with_an_image(url):
    """Structured output constrains a VLM's answer; /v1/messages/count_tokens counts the image's
    tokens (the processor's expansion, not one placeholder)."""
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    resp = chat(url, [{"role": "user", "content": QUESTION, "images": [b64(IMG_A)]}],
                format=schema, options={"temperature": 0, "num_predict": 80})
    assert resp.status_code == 200, resp.text
    assert isinstance(json.loads(resp.json()["message"]["content"])["a"], int)

    def count(*images: bytes) -> int:
        blocks = [{"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                               "data": b64(i)}} for i in images]
        r = requests.post(url + "/v1/messages/count_tokens", json={"model": VLM, "messages": [
            {"role": "user", "content": [{"type": "text", "text": QUESTION}, *blocks]}]},
            timeout=30)
        assert r.status_code == 200, r.text
        return r.json()["input_tokens"]

    assert count(IMG_A, IMG_B) - count(IMG_A) == 6


def test_a_text_model_answers_while_a_vlm_request_runs(url):
    """A long streamed VLM generation runs one token per engine step beside the text model's
    job: the text request is answered within seconds while the VLM stream is still going; the
    VLM job is then canceled by hanging up, and the VLM serves the next request at once."""
    chat(url, [{"role": "user", "content": "warm"}], model=TEXT)  # loaded before the timing
    body = {"model": VLM, "stream": True, "options": {"temperature": 0, "num_predict": 6000},
            "messages": [{"role": "user", "content": QUESTION, "images": [b64(IMG_A)]}]}
    resp = requests.post(url + "/api/chat", json=body, stream=True, timeout=60)
    lines = resp.iter_lines()
    assert json.loads(next(lines))["done"] is False  # the VLM job is decoding
    counted = {"n": 0, "done": False}

    def drain() -> None:
        try:
            for line in lines:
                if line:
                    counted["n"] += 1
                    counted["done"] = json.loads(line)["done"]
                    if counted["done"]:
                        return
        except (requests.RequestException, AttributeError, ValueError):
            return  # the test hung up (resp.close) while this thread was reading

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    began = time.monotonic()
    text = chat(url, [{"role": "user", "content": "hello"}], model=TEXT)
    took = time.monotonic() - began
    assert text.status_code == 200 and took < 3.0, (text.status_code, took)
    seen = counted["n"]
    time.sleep(0.3)
    assert not counted["done"] and counted["n"] > seen  # still streaming after the answer
    resp.close()
    reader.join(5)
    began = time.monotonic()
    assert ask(url, IMG_B)["eval_count"] > 0  # the canceled job freed the runner
    assert time.monotonic() - began < 3.0


def test_concurrent_vlm_requests_queue_and_each_gets_its_own_answer(url):
    """One VLM job runs at a time: the others wait in the queue, none sees another's image."""
    def answer(seed: int) -> tuple[int, ...]:
        """The answer's token ids (/api/generate's context): texts of random tokens can be
        alike once undecodable bytes become U+FFFD."""
        resp = requests.post(url + "/api/generate", json={
            "model": VLM, "prompt": QUESTION, "images": [b64(png(seed))], "stream": False,
            "options": GREEDY}, timeout=60)
        assert resp.status_code == 200, resp.text
        return tuple(resp.json()["context"])

    expected = {seed: answer(seed) for seed in (5, 6, 7)}
    assert len(set(expected.values())) == 3  # a mix-up would show
    got: dict[int, tuple[int, ...]] = {}

    def one(seed: int) -> None:
        got[seed] = answer(seed)

    threads = [threading.Thread(target=one, args=(seed,)) for seed in expected]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert got == expected


def test_ollama_python_chat_with_an_image_path(url, paths):
    import ollama

    picture = paths["root"] / "a.png"
    picture.write_bytes(IMG_A)
    reply = ollama.Client(host=url).chat(model=VLM, options=GREEDY, messages=[
        {"role": "user", "content": QUESTION, "images": [str(picture)]}])
    assert reply.message.content == ask(url, IMG_A)["message"]["content"]


def test_openai_sdk_image_url(url):
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="x")
    reply = client.chat.completions.create(model=VLM, max_tokens=8, temperature=0, messages=[
        {"role": "user", "content": [
            {"type": "text", "text": QUESTION},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64(IMG_B)}}]}])
    assert reply.choices[0].message.content == ask(url, IMG_B)["message"]["content"]


def test_anthropic_sdk_image_block(url):
    import anthropic

    client = anthropic.Anthropic(base_url=url, api_key="x")
    reply = client.messages.create(model=VLM, max_tokens=8, extra_body={"temperature": 0},
                                   messages=[
        {"role": "user", "content": [
            {"type": "text", "text": QUESTION},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": b64(IMG_C)}}]}])
    text = "".join(b.text for b in reply.content if b.type == "text")
    assert text == ask(url, IMG_C)["message"]["content"]
