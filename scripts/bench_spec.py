"""Benchmark worker: speculative decoding through the bridge's engine (a lone greedy stream).

The same prompt decoded plainly and with the draft: decode tok/s of each, the speedup, the share
of tokens that came from the draft (acceptance) and whether the output is token-identical.
Prints BENCH_JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import LONG_ASK  # noqa: E402

from bridge.engine import Done, Engine, Failed, Job, PromptSpec  # noqa: E402
from bridge.wire.options import Options  # noqa: E402


class Drafted(logging.Handler):
    """Collects the engine's `speculative … tokens=N from_draft=M` lines."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, int]] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.startswith("speculative "):
            found = re.findall(r"(?:tokens|from_draft)=(\d+)", msg)
            self.seen.append((int(found[0]), int(found[1])))


def decode(engine: Engine, model: str, draft: str | None, tokens: int) -> Done:
    job = Job(model, "m", spec=PromptSpec(messages=[{"role": "user", "content": LONG_ASK}]),
              options=Options(temperature=0, num_predict=tokens), draft_path=draft)
    engine.submit(job)
    while not isinstance(event := job.events.get(timeout=600), Done | Failed):
        pass
    if isinstance(event, Failed):
        raise event.error
    return event


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--draft", required=True)
    p.add_argument("--tokens", type=int, default=48)
    args = p.parse_args()
    handler = Drafted()
    logging.getLogger("bridge.engine.batch").addHandler(handler)
    logging.getLogger("bridge.engine.batch").setLevel(logging.INFO)
    engine = Engine(prompt_cache_bytes=0)
    engine.start()
    try:
        decode(engine, args.model, args.draft, 4)  # loads both, warms both paths up
        plain = decode(engine, args.model, None, args.tokens)
        handler.seen.clear()
        spec = decode(engine, args.model, args.draft, args.tokens)
    finally:
        engine.stop()
    rate = [d.eval_count / (d.eval_duration / 1e9) for d in (plain, spec)]
    tokens, from_draft = handler.seen[-1] if handler.seen else (0, 0)
    print("BENCH_JSON " + json.dumps({
        "draft": args.draft, "plain_tok_s": rate[0], "speculative_tok_s": rate[1],
        "speedup": rate[1] / rate[0], "acceptance": from_draft / tokens if tokens else None,
        "identical": plain.context == spec.context}))


if __name__ == "__main__":
    main()
