"""Unknown models on a bridge with no upstream (`--upstream none`) answer in Ollama's words for
each endpoint (reference §5), as they already did when the upstream is down: found by the client
audit, where `ollama.embed` on an unknown name said `model 'x' not found`."""

from __future__ import annotations

import ollama
import openai
import pytest


@pytest.fixture(scope="module")
def url(server) -> str:
    return server


def test_unknown_model_texts_per_endpoint(url):
    client = ollama.Client(host=url)
    calls = {
        "embed": (lambda: client.embed(model="nope-x", input="hi"),
                  'model "nope-x" not found, try pulling it first'),
        "embeddings": (lambda: client.embeddings(model="nope-x", prompt="hi"),
                       'model "nope-x" not found, try pulling it first'),
        "pull": (lambda: client.pull("nope-x"), "pull model manifest: file does not exist"),
        "chat": (lambda: client.chat(model="nope-x", messages=[{"role": "user", "content": "x"}]),
                 "model 'nope-x' not found"),
        "show": (lambda: client.show("nope-x"), "model 'nope-x:latest' not found"),
    }
    for what, (call, text) in calls.items():
        with pytest.raises(ollama.ResponseError) as err:
            call()
        assert (err.value.status_code, err.value.error) == (404, text), what
    oa = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError) as err:
        oa.embeddings.create(model="nope-x", input="hi")
    assert err.value.body["message"] == 'model "nope-x" not found, try pulling it first'
