"""ollama-python's model-management calls on models the bridge serves itself (client sweep,
docs/clients.md), against the session's `protocol_bridges` bridge: its upstream is a second bridge
process, which has never heard of `tiny`.

`copy`, `create(from_=...)` and `push` belong to the real Ollama (forwarded). On an MLX model
they used to answer `404 model 'tiny' not found` for a model `client.list()` had just listed;
now a 400 says what is going on.
"""

from __future__ import annotations

import ollama
import pytest


@pytest.fixture(scope="module")
def client(protocol_bridges) -> ollama.Client:
    return ollama.Client(host=protocol_bridges[0])


def _refused(call) -> ollama.ResponseError:
    with pytest.raises(ollama.ResponseError) as info:
        call()
    return info.value


def test_registry_operations_on_an_mlx_model_say_why_they_are_refused(client):
    assert "tiny:latest" in [m.model for m in client.list().models]
    for call, path in ((lambda: client.copy("tiny", "tiny-copy"), "/api/copy"),
                       (lambda: client.create(model="tiny-terse", from_="tiny",
                                              system="Be terse."), "/api/create"),
                       (lambda: client.push("tiny"), "/api/push")):
        error = _refused(call)
        assert error.status_code == 400, (path, error.status_code, error.error)
        assert error.error.startswith(f"{path} is not supported for model 'tiny'")
        assert "mlx-bridge serves it on MLX" in error.error
    # nothing was made: no copy appeared anywhere
    assert "tiny-copy:latest" not in [m.model for m in client.list().models]


def test_unknown_models_are_still_the_upstreams_to_judge(client):
    """A name the bridge does not serve is forwarded as before (the upstream's 404 here)."""
    error = _refused(lambda: client.copy("not-here", "elsewhere"))
    assert error.status_code == 404 and "not-here" in error.error


def test_everyday_calls_still_answer(client):
    reply = client.chat(model="tiny", messages=[{"role": "user", "content": "hi"}],
                        options={"num_predict": 2})
    assert reply.done and reply.message.role == "assistant"
    assert "completion" in client.show("tiny").capabilities
