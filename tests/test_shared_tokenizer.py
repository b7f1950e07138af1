"""A model's tokenizer is loaded once, for the engine and the request threads (issue 17: RSS
after unload). Two loads per model doubled the ~60 MB of short-lived Python objects a
tokenizer load makes, and the allocator arenas they left pinned (docs/performance.md)."""

from __future__ import annotations

import gc
import threading

import pytest

from bridge.engine.models import Tokenizers

from .helpers import tiny_app


@pytest.fixture(scope="module")
def app(tiny_model_dir, tmp_path_factory):
    yield from tiny_app(tiny_model_dir, tmp_path_factory.mktemp("shared-tok-home"))


def test_engine_and_request_side_use_one_tokenizer(app):
    client = app.test_client()
    reply = client.post("/api/chat", json={"model": "tiny", "stream": False,
                                           "messages": [{"role": "user", "content": "hi"}],
                                           "options": {"num_predict": 2}})
    assert reply.status_code == 200
    local = app.extensions["bridge"].local
    key = local.find("tiny").key
    engine_side = local.engine.cache.models[key].tokenizer  # the engine is idle: safe to read
    request_side = local.tokenizers._slots[key].tokenizer
    assert request_side is engine_side
    del engine_side, request_side

    # Unloaded: nothing holds it any more, so the shared store lets it go too.
    reply = client.post("/api/generate", json={"model": "tiny", "keep_alive": 0})
    assert reply.status_code == 200
    gc.collect()
    assert key not in local.engine.cache.models
    assert not [k for k in local.engine.tokenizers._loaded if k[0] == key]


def test_concurrent_gets_load_once(tiny_model_dir, monkeypatch):
    import bridge.engine.models as models

    loads = []
    real = models.load_text_tokenizer

    def counted(path: str):
        loads.append(path)
        return real(path)

    monkeypatch.setattr(models, "load_text_tokenizer", counted)
    store = Tokenizers()
    got: list = []
    threads = [threading.Thread(target=lambda: got.append(store.get(str(tiny_model_dir))))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(loads) == 1 and all(tok is got[0] for tok in got)
    del got[:]
    gc.collect()
    store.get(str(tiny_model_dir))  # nobody held it: loaded again
    assert len(loads) == 2


def test_an_edited_chat_template_file_makes_a_new_tokenizer(tmp_path):
    """Any non-weight file counts (chat_template.jinja, special_tokens_map.json, …), as the
    request side's description digest does: an edited template is not served stale."""
    import shutil

    from bridge.testing import build_tiny_model

    model = build_tiny_model(tmp_path / "m")
    store = Tokenizers()
    first = store.get(str(model))
    assert store.get(str(model)) is first
    (model / "chat_template.jinja").write_text("NEW {{ messages[0]['content'] }}")
    second = store.get(str(model))
    assert second is not first
    assert second.apply_chat_template([{"role": "user", "content": "hi"}],
                                      tokenize=False) == "NEW hi"
    shutil.copy(model / "special_tokens_map.json", tmp_path / "s.json")
    (model / "special_tokens_map.json").write_text((tmp_path / "s.json").read_text() + " ")
    assert store.get(str(model)) is not second
