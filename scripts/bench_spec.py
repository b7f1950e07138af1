"""Benchmark worker: speculative decoding through the bridge's engine (a lone greedy stream).

The same prompt decoded plainly and with the draft (a model directory, or `prompt-lookup`):
decode tok/s of each, the speedup, the share of tokens that came from the draft (acceptance),
for prompt lookup the share of proposed tokens accepted, and whether the output is
token-identical. One run per `--prompts` name (bench_common.SPEC_PROMPTS). Prints BENCH_JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import SPEC_PROMPTS  # noqa: E402

from bridge.engine import Done, Engine, Failed, Job, PromptSpec  # noqa: E402
from bridge.engine.lookup import NAME as LOOKUP  # noqa: E402
from bridge.engine.lookup import PromptLookup  # noqa: E402
from bridge.wire.options import Options  # noqa: E402


class Drafted(logging.Handler):
    """Collects the engine's `speculative … tokens=N from_draft=M [proposed=P]` lines."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[list[int]] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.startswith("speculative "):
            self.seen.append([int(v) for v in
                              re.findall(r"(?:tokens|from_draft|proposed)=(\d+)", msg)])


def decode(engine: Engine, model: str, draft: str | PromptLookup | None, tokens: int,
           prompt: str) -> tuple[Done, float]:
    """One request; with the process's CPU seconds per generated token (prefill included), which
    a loaded machine moves far less than the wall-clock tok/s."""
    lookup = draft if isinstance(draft, PromptLookup) else None
    job = Job(model, "m", spec=PromptSpec(messages=[{"role": "user", "content": prompt}]),
              options=Options(temperature=0, num_predict=tokens), lookup=lookup,
              draft_path=None if lookup or draft is None else str(draft))
    cpu = time.process_time()
    engine.submit(job)
    while not isinstance(event := job.events.get(timeout=600), Done | Failed):
        pass
    if isinstance(event, Failed):
        raise event.error
    return event, (time.process_time() - cpu) / max(1, event.eval_count)


def compare(engine: Engine, model: str, draft: str | PromptLookup, tokens: int, name: str,
            handler: Drafted) -> dict:
    """Plain, then drafted, on one prompt."""
    prompt = SPEC_PROMPTS[name]
    plain, plain_cpu = decode(engine, model, None, tokens, prompt)
    handler.seen.clear()
    spec, spec_cpu = decode(engine, model, draft, tokens, prompt)
    rate = [d.eval_count / (d.eval_duration / 1e9) for d in (plain, spec)]
    seen = handler.seen[-1] if handler.seen else [0, 0]
    made, from_draft = seen[0], seen[1]
    return {"prompt": name, "tokens": spec.eval_count, "plain_tok_s": rate[0],
            "speculative_tok_s": rate[1], "speedup": rate[1] / rate[0],
            "plain_cpu_ms_per_token": plain_cpu * 1e3,
            "speculative_cpu_ms_per_token": spec_cpu * 1e3,
            "cpu_speedup": plain_cpu / spec_cpu if spec_cpu else None,
            "acceptance": from_draft / made if made else None,
            "proposed": seen[2] if len(seen) > 2 else None,
            "proposed_accepted": from_draft / seen[2] if len(seen) > 2 and seen[2] else None,
            "identical": plain.context == spec.context}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--draft", required=True, help=f"a draft model directory, or {LOOKUP}")
    p.add_argument("--tokens", type=int, default=48)
    p.add_argument("--prompts", default="story", help=f"comma list of {', '.join(SPEC_PROMPTS)}")
    p.add_argument("--ngram", type=int, default=PromptLookup.ngram)
    p.add_argument("--lookup-tokens", type=int, default=PromptLookup.tokens)
    args = p.parse_args()
    draft: str | PromptLookup = args.draft
    if args.draft == LOOKUP:
        draft = PromptLookup(ngram=args.ngram, tokens=args.lookup_tokens)
    handler = Drafted()
    engine_log = logging.getLogger("bridge.engine")  # the line comes from engine/solo.py
    engine_log.addHandler(handler)
    engine_log.setLevel(logging.INFO)
    engine = Engine(prompt_cache_bytes=0)
    engine.start()
    try:
        decode(engine, args.model, draft, 4, SPEC_PROMPTS["story"])  # loads; warms both paths
        decode(engine, args.model, None, 4, SPEC_PROMPTS["story"])
        runs = [compare(engine, args.model, draft, args.tokens, name, handler)
                for name in args.prompts.split(",")]
    finally:
        engine.stop()
    out = {"draft": args.draft, **runs[0], "runs": runs}
    if isinstance(draft, PromptLookup):
        out.update(ngram=draft.ngram, lookup_tokens=draft.tokens)
    print("BENCH_JSON " + json.dumps(out))


if __name__ == "__main__":
    main()
