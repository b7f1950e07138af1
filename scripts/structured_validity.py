#!/usr/bin/env python3
"""How often structured output validates: the test suite's Pydantic schema set, on a running server.

For every model of tests/structured_models.py and every seed it asks /api/chat `format`,
/api/generate `format` and the openai SDK's `chat.completions.parse` (which sends its strict
`json_schema`) at default sampling, and counts outputs that parse as JSON and validate against
the schema with every object closed (no extra keys, as Ollama's grammar allows none).

    PYTHONPATH=$PWD python scripts/structured_validity.py --url http://127.0.0.1:11434 \\
        --model smollm2:135m --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import jsonschema
import openai
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.structured_models import SCHEMA_SET, closed, messages  # noqa: E402

NUM_PREDICT = 400


def verdict(text: str, schema: dict) -> str:
    try:
        value = json.loads(text)
    except ValueError:
        return "not JSON"
    try:
        jsonschema.validate(value, closed(schema))
    except jsonschema.ValidationError as exc:
        return "extra keys" if exc.validator == "additionalProperties" else "invalid"
    return "valid"


def native(url: str, model: str, path: str, schema: dict, msgs: list, seed: int) -> tuple[str, str]:
    body = {"model": model, "format": schema, "stream": False,
            "options": {"seed": seed, "num_predict": NUM_PREDICT}}
    if path == "/api/chat":
        body["messages"] = msgs
    else:
        body["prompt"] = msgs[0]["content"]
    resp = requests.post(url + path, json=body, timeout=600)
    if resp.status_code != 200:
        return f"HTTP {resp.status_code}", ""
    out = resp.json()
    text = out["message"]["content"] if path == "/api/chat" else out["response"]
    return verdict(text, schema), out.get("done_reason", "")


def sdk(client: openai.OpenAI, model: str, pyd: type, msgs: list, seed: int) -> tuple[str, str]:
    try:
        done = client.chat.completions.parse(model=model, messages=msgs, response_format=pyd,
                                             seed=seed, max_tokens=NUM_PREDICT)
    except openai.LengthFinishReasonError:
        return "not JSON", "length"
    except openai.APIStatusError as exc:
        return f"HTTP {exc.status_code}", ""
    except ValueError:  # pydantic's ValidationError: not JSON, or not this model
        return "invalid", ""
    choice = done.choices[0]
    return verdict(choice.message.content or "", pyd.model_json_schema()), choice.finish_reason


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:11434")
    ap.add_argument("--model", default="smollm2:135m")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    client = openai.OpenAI(base_url=args.url + "/v1", api_key="unused", max_retries=0, timeout=600)
    rows = []
    for pyd, question in SCHEMA_SET:
        schema, msgs = pyd.model_json_schema(), messages(pyd, question)
        for seed in args.seeds:
            for via in ("/api/chat", "/api/generate", "openai parse"):
                started = time.monotonic()
                if via == "openai parse":
                    result, reason = sdk(client, args.model, pyd, msgs, seed)
                else:
                    result, reason = native(args.url, args.model, via, schema, msgs, seed)
                rows.append({"model": pyd.__name__, "seed": seed, "via": via, "result": result,
                             "done_reason": reason,
                             "seconds": round(time.monotonic() - started, 1)})
                print(json.dumps(rows[-1]), flush=True)
    by_result = Counter(r["result"] for r in rows)
    valid = by_result["valid"]
    print(f"valid {valid}/{len(rows)} ({100 * valid / len(rows):.0f}%); {dict(by_result)}")
    for via in ("/api/chat", "/api/generate", "openai parse"):
        mine = [r for r in rows if r["via"] == via]
        print(f"  {via}: {sum(r['result'] == 'valid' for r in mine)}/{len(mine)}")
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "summary": dict(by_result)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
