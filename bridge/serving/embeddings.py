"""Embeddings for MLX models: /api/embed, legacy /api/embeddings and /v1/embeddings bodies and
answers."""

from __future__ import annotations

import base64
import math
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from bridge.engine import Done, Embedded, PromptSpec
from bridge.errors import BadRequest, Unsupported
from bridge.http.limits import check_embed_inputs
from bridge.routing.router import Plan
from bridge.serving.generation import make_job
from bridge.serving.local import LocalModel
from bridge.state import bridge
from bridge.wire.durations import parse_keep_alive
from bridge.wire.jsonbody import Fields
from bridge.wire.options import Options, parse_options


@dataclass
class EmbedRequest:
    """A parsed embedding request (native or OpenAI)."""

    model: str
    inputs: list[str]
    truncate: bool = True
    dimensions: int = 0
    options: Options = field(default_factory=Options)
    keep_alive: float | None = None


def _fields(f: Fields, inputs: list[str]) -> EmbedRequest:
    try:
        keep_alive = parse_keep_alive(f.raw("keep_alive"))
    except (ValueError, TypeError) as exc:
        raise BadRequest(str(exc)) from None
    dimensions = f.int("dimensions", 0) or 0
    if dimensions < 0:
        raise BadRequest("dimensions must be a positive integer")
    return EmbedRequest(f.str("model"), inputs, truncate=bool(f.bool("truncate", True)),
                        dimensions=dimensions, options=parse_options(f.dict("options")),
                        keep_alive=keep_alive)


def parse_embed(body: dict[str, Any]) -> EmbedRequest:
    """/api/embed: `input` is a string or a list of strings; "" and absent mean "just load"."""
    f = Fields(body, "EmbedRequest")
    value = f.raw("input")
    if value is None or value == "":
        inputs: list[str] = []
    elif isinstance(value, str):
        inputs = [value]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        inputs = list(value)
    else:
        raise BadRequest("invalid input type")
    return _fields(f, inputs)


def parse_legacy(body: dict[str, Any]) -> EmbedRequest:
    """/api/embeddings: one `prompt`; "" means "just load"."""
    f = Fields(body, "EmbeddingRequest")
    prompt = f.str("prompt")
    return _fields(f, [prompt] if prompt else [])


def parse_openai(body: dict[str, Any]) -> EmbedRequest:
    """/v1/embeddings (already checked by embeddings_check): "" embeds the empty string."""
    value = body.get("input")
    inputs = [value] if isinstance(value, str) else list(value or [])
    return _fields(Fields(body, "EmbedRequest"), inputs)


def normalise(vector: list[float]) -> list[float]:
    """L2-normalised copy (a zero vector stays zero)."""
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm > 0 else list(vector)


def shaped(vector: list[float], dimensions: int) -> list[float]:
    """Ollama's /api/embed vector: normalised, cut to `dimensions`, normalised again."""
    vector = normalise(vector)
    if 0 < dimensions < len(vector):
        vector = normalise(vector[:dimensions])
    return vector


def run(req: EmbedRequest, model: LocalModel, plan: Plan) -> Embedded | Done:
    """Submit the job (a plain load when there is no input) and wait for its one result."""
    check_embed_inputs(len(req.inputs))  # here: an upstream answers by its own rules
    if req.inputs and "vision" in model.description.capabilities:
        # mlx-vlm models have no pooled text path here: say so rather than embed garbage.
        raise Unsupported(f'"{model.entry.name}" is a vision model and does not support '
                          "embeddings")
    spec = PromptSpec(embed_inputs=req.inputs, truncate=req.truncate) if req.inputs else None
    job = make_job(req, model, plan, spec)
    bridge().local.tokenize(model, job)  # here: a huge input stalls no one on the engine thread
    result: Embedded | Done | None = None
    for event in bridge().local.run(job):
        if isinstance(event, (Embedded, Done)):
            result = event
    assert result is not None
    return result


def embed_body(req: EmbedRequest, model: LocalModel, plan: Plan, started: int) -> dict[str, Any]:
    """The /api/embed response object."""
    result = run(req, model, plan)
    if not isinstance(result, Embedded):
        return {"model": req.model, "embeddings": []}
    return {"model": req.model, "embeddings": [shaped(v, req.dimensions) for v in result.vectors],
            "total_duration": time.perf_counter_ns() - started,
            "load_duration": result.load_duration,
            "prompt_eval_count": result.prompt_eval_count}


def legacy_body(req: EmbedRequest, model: LocalModel, plan: Plan) -> dict[str, Any]:
    """The /api/embeddings response object: the raw pooled vector, not normalised."""
    result = run(req, model, plan)
    return {"embedding": result.vectors[0] if isinstance(result, Embedded) else []}


def openai_body(req: EmbedRequest, model: LocalModel, plan: Plan, encoding: str) -> dict[str, Any]:
    """The /v1/embeddings response object (float lists, or base64 little-endian float32)."""
    result = run(req, model, plan)
    assert isinstance(result, Embedded)  # embeddings_check refused an empty list
    data = []
    for i, vector in enumerate(result.vectors):
        values = shaped(vector, req.dimensions)
        out: Any = values
        if encoding == "base64":
            out = base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode("ascii")
        data.append({"object": "embedding", "embedding": out, "index": i})
    usage = {"prompt_tokens": result.prompt_eval_count, "total_tokens": result.prompt_eval_count}
    return {"object": "list", "data": data, "model": req.model, "usage": usage}
