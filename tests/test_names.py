"""Tests for bridge.wire.names (mirrors Ollama's types/model/name.go rules)."""

from __future__ import annotations

import dataclasses

import pytest

from bridge.wire.names import InvalidModelName, ModelName, name_key, normalize

VALID = [
    # raw, host, namespace, model, tag
    ("llama3", "registry.ollama.ai", "library", "llama3", "latest"),
    ("llama3.2", "registry.ollama.ai", "library", "llama3.2", "latest"),
    ("llama3:8b", "registry.ollama.ai", "library", "llama3", "8b"),
    ("Qwen2.5-Coder:7B", "registry.ollama.ai", "library", "Qwen2.5-Coder", "7B"),
    ("user/model:tag", "registry.ollama.ai", "user", "model", "tag"),
    ("user/model", "registry.ollama.ai", "user", "model", "latest"),
    ("library/mistral:latest", "registry.ollama.ai", "library", "mistral", "latest"),
    (
        "registry.ollama.ai/library/mistral:latest",
        "registry.ollama.ai",
        "library",
        "mistral",
        "latest",
    ),
    ("hf.co/user/repo:Q4_K_M", "hf.co", "user", "repo", "Q4_K_M"),
    (
        "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF",
        "hf.co",
        "bartowski",
        "Llama-3.2-1B-Instruct-GGUF",
        "latest",
    ),
    ("localhost:5000/ns/model:v1", "localhost:5000", "ns", "model", "v1"),
    ("host:1234/ns/model", "host:1234", "ns", "model", "latest"),
    ("https://hf.co/user/repo:q4", "hf.co", "user", "repo", "q4"),
    ("http://localhost:8080/ns/m", "localhost:8080", "ns", "m", "latest"),
    ("_x", "registry.ollama.ai", "library", "_x", "latest"),
    ("x", "registry.ollama.ai", "library", "x", "latest"),
    ("0", "registry.ollama.ai", "library", "0", "latest"),
    (
        "my_ns-1/my.model_2-x:tag.1-a_b",
        "registry.ollama.ai",
        "my_ns-1",
        "my.model_2-x",
        "tag.1-a_b",
    ),
    (
        "mistral:7b-instruct-v0.3-q4_K_M",
        "registry.ollama.ai",
        "library",
        "mistral",
        "7b-instruct-v0.3-q4_K_M",
    ),
    ("llama3@sha256:" + "a" * 64, "registry.ollama.ai", "library", "llama3", "latest"),
    ("llama3:8b@sha256:" + "b" * 64, "registry.ollama.ai", "library", "llama3", "8b"),
    ("user/m:t@sha256-" + "c" * 64, "registry.ollama.ai", "user", "m", "t"),
    ("gpt-oss:20b-cloud", "registry.ollama.ai", "library", "gpt-oss", "20b-cloud"),
    ("m" * 80, "registry.ollama.ai", "library", "m" * 80, "latest"),
    ("m:" + "t" * 80, "registry.ollama.ai", "library", "m", "t" * 80),
    ("n" * 80 + "/m", "registry.ollama.ai", "n" * 80, "m", "latest"),
    ("h" * 350 + "/n/m", "h" * 350, "n", "m", "latest"),
]

INVALID = [
    "",
    "../../etc",
    "..",
    "../x",
    "a/../b",
    "a..b",
    "model:..",
    "/etc/passwd",
    "/llama3",
    "llama3/",
    "a//b",
    "a/b/c/d",
    "h/n/m/x:t",
    "llama 3",
    " llama3",
    "llama3 ",
    "llama3\n",
    "llama3\t:x",
    "a\\b",
    "..\\..\\windows",
    ":tag",
    "model:",
    "model@",
    "@sha256:" + "a" * 64,
    "model:tag@",
    "a:b:c",
    "-model",
    ".model",
    "model:-tag",
    "model:.tag",
    "-ns/model",
    "ns.dot/model",
    "hf.co/model",
    "-host/ns/model",
    "model+x",
    "model:t+x",
    "model:t/x",
    "modèl",
    "m" * 81,
    "m:" + "t" * 81,
    "n" * 81 + "/m",
    "h" * 351 + "/n/m",
    "https://a/b",
    "ht/tp://a/b/c",
    "ftp://h/n/m",
    "file:///etc/passwd",
    "user/model:tag:extra",
    "mo$del",
    "model;rm -rf",
    "model@bad digest",
    "model@-bad",
]


@pytest.mark.parametrize(("raw", "host", "namespace", "model", "tag"), VALID)
def test_parse_valid(raw: str, host: str, namespace: str, model: str, tag: str) -> None:
    assert ModelName.parse(raw) == ModelName(host, namespace, model, tag)


@pytest.mark.parametrize("raw", INVALID)
def test_parse_invalid(raw: str) -> None:
    with pytest.raises(InvalidModelName) as info:
        ModelName.parse(raw)
    assert str(info.value) == "invalid model name"
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("raw", INVALID)
def test_normalize_and_key_invalid(raw: str) -> None:
    with pytest.raises(InvalidModelName):
        normalize(raw)
    with pytest.raises(InvalidModelName):
        name_key(raw)


@pytest.mark.parametrize("raw", [None, 3, b"llama3", ["llama3"]])
def test_parse_non_string(raw: object) -> None:
    with pytest.raises(InvalidModelName):
        ModelName.parse(raw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "display"),
    [
        ("llama3", "llama3:latest"),
        ("llama3.2", "llama3.2:latest"),
        ("llama3.2:latest", "llama3.2:latest"),
        ("library/llama3.2", "llama3.2:latest"),
        ("registry.ollama.ai/library/llama3.2:1b", "llama3.2:1b"),
        ("REGISTRY.ollama.ai/Library/llama3.2:1b", "llama3.2:1b"),
        ("user/model:tag", "user/model:tag"),
        ("registry.ollama.ai/user/model", "user/model:latest"),
        ("hf.co/user/repo:q4", "hf.co/user/repo:q4"),
        ("hf.co/library/repo", "hf.co/library/repo:latest"),
        ("https://hf.co/user/repo", "hf.co/user/repo:latest"),
        ("Qwen2.5-Coder:7B", "Qwen2.5-Coder:7B"),
        ("llama3@sha256:" + "a" * 64, "llama3:latest"),
    ],
)
def test_display(raw: str, display: str) -> None:
    name = ModelName.parse(raw)
    assert name.display == display
    assert str(name) == display
    assert normalize(raw) == display
    assert name.key == display.lower()
    assert name_key(raw) == display.lower()


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("llama3", "LLAMA3:Latest"),
        ("Qwen2.5-Coder:7B", "qwen2.5-coder:7b"),
        ("User/Model:Tag", "user/model:tag"),
        ("registry.ollama.ai/library/llama3", "llama3:latest"),
        ("HF.CO/User/Repo:Q4_K_M", "hf.co/user/repo:q4_k_m"),
    ],
)
def test_key_is_case_insensitive(a: str, b: str) -> None:
    assert name_key(a) == name_key(b)


def test_display_preserves_case() -> None:
    assert normalize("Qwen2.5-Coder:7B") != normalize("qwen2.5-coder:7b")


@pytest.mark.parametrize(
    ("raw", "owner"),
    [("llama3", "library"), ("user/model:tag", "user"), ("hf.co/bartowski/repo", "bartowski")],
)
def test_namespace_display(raw: str, owner: str) -> None:
    assert ModelName.parse(raw).namespace_display == owner


def test_frozen_and_hashable() -> None:
    name = ModelName.parse("llama3")
    with pytest.raises(dataclasses.FrozenInstanceError):
        name.tag = "x"  # type: ignore[misc]
    assert len({name, ModelName.parse("llama3:latest")}) == 1


@pytest.mark.parametrize("raw", [v[0] for v in VALID])
def test_display_round_trips(raw: str) -> None:
    display = normalize(raw)
    assert normalize(display) == display
