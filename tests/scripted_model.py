"""Tiny real MLX models whose output follows a script: for tool-call and thinking tests.

`build_scripted_model` starts from `bridge.testing.build_tiny_model`, adds whole phrases as
tokens, and writes weights whose every layer adds nothing (the residual stream stays the
current token's embedding) with an untied head mapping token i's embedding to the logit of
its successor. The real engine then generates (greedy or sampled: the successor's logit leads
by ~40 nats) exactly the chain the test asked for, through mlx-lm's own tokenizer wrapper,
detokenizer, tool-call parser and think-marker detection. Tokens off the script get noise.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bridge.testing import EOS_TOKEN, build_tiny_model

NEWLINE = "\u010a"  # byte-level BPE spelling of "\n": the last token of a ChatML generation prompt

CHATML = (
    "{%- for m in messages %}"
    "{{- '<|im_start|>' + m['role'] + '\\n' + (m['content'] or '') + '<|im_end|>\\n' }}"
    "{%- endfor %}"
)

# Qwen3-like: `enable_thinking=false` closes an empty think block in the prompt.
THINK_TEMPLATE = CHATML + (
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think></think>' }}{%- endif %}"
    "{%- endif %}"
)

# Qwen2.5-like tool template (mlx-lm infers its `json_tools` parser from `<tool_call>` and
# `tool_call.name`). After a tool result, the generation prompt ends with the result's text.
TOOLS_TEMPLATE = (
    "{%- if tools %}{{- '<|im_start|>system\\n# Tools' }}"
    "{%- for t in tools %}{{- '\\n' + (t | tojson) }}{%- endfor %}"
    "{{- '\\nCall one with <tool_call>{\"name\": ..., \"arguments\": ...}"
    "</tool_call><|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for m in messages %}"
    "{%- if m['role'] == 'assistant' and m['tool_calls'] %}{{- '<|im_start|>assistant\\n' }}"
    "{%- for tool_call in m['tool_calls'] %}{%- set tool_call = tool_call['function'] %}"
    "{{- '<tool_call>{\"name\": \"' + tool_call.name + '\", \"arguments\": ' "
    "+ (tool_call.arguments | tojson) + '}</tool_call>' }}"
    "{%- endfor %}{{- '<|im_end|>\\n' }}"
    "{%- elif m['role'] == 'tool' %}"
    "{{- '<|im_start|>tool ' + (m['name'] or '') + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>' + m['role'] + '\\n' + (m['content'] or '') + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if messages[-1]['role'] == 'tool' %}{{- messages[-1]['content'] }}{%- endif %}"
    "{%- endif %}"
)

CALL = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
WEATHER = "Sunny, 22 C"
ANSWER = "It is sunny in Paris."
THOUGHT = "Let me think."
HELLO = "Hello there."

THINK_SCRIPT = {NEWLINE: "<think>", "<think>": THOUGHT, THOUGHT: "</think>", "</think>": HELLO,
                HELLO: EOS_TOKEN}
TOOLS_SCRIPT = {NEWLINE: "<tool_call>", "<tool_call>": CALL, CALL: "</tool_call>",
                "</tool_call>": EOS_TOKEN, WEATHER: ANSWER, ANSWER: EOS_TOKEN}


def build_scripted_model(path: Path, script: dict[str, str], template: str, seed: int = 0) -> Path:
    """A tiny llama whose next token after `a` is `script[a]` (tokens missing are added)."""
    from tokenizers import AddedToken, Tokenizer

    root = build_tiny_model(path, chat_template=template, seed=seed)
    tok = Tokenizer.from_file(str(root / "tokenizer.json"))
    phrases = [t for t in dict.fromkeys([*script, *script.values()]) if tok.token_to_id(t) is None]
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in phrases])
    tok.save(str(root / "tokenizer.json"))
    vocab = tok.get_vocab_size(with_added_tokens=True)
    config = json.loads((root / "config.json").read_text())
    config.update(vocab_size=vocab, tie_word_embeddings=False)
    (root / "config.json").write_text(json.dumps(config, indent=2))
    ids = {t: tok.token_to_id(t) for t in [*script, *script.values()]}
    _save(root / "model.safetensors",
          _weights(config, {ids[a]: ids[b] for a, b in script.items()}, seed))
    return root


def _weights(config: dict, successor: dict[int, int], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.RandomState(seed)
    vocab, hidden, inter = config["vocab_size"], config["hidden_size"], config["intermediate_size"]
    kv = hidden // config["num_attention_heads"] * config["num_key_value_heads"]
    embed = rng.standard_normal((vocab, hidden)).astype(np.float32)
    head = np.zeros((vocab, hidden), np.float32)
    for token, nxt in successor.items():
        head[nxt] += embed[token]  # logit(nxt) = e_token . e_current / rms: ~hidden when equal
    weights = {"model.embed_tokens.weight": embed, "lm_head.weight": head,
               "model.norm.weight": np.ones(hidden, np.float32)}
    shapes = {"self_attn.q_proj": (hidden, hidden), "self_attn.k_proj": (kv, hidden),
              "self_attn.v_proj": (kv, hidden), "self_attn.o_proj": (hidden, hidden),
              "mlp.gate_proj": (inter, hidden), "mlp.up_proj": (inter, hidden),
              "mlp.down_proj": (hidden, inter)}
    for i in range(config["num_hidden_layers"]):
        for name, shape in shapes.items():  # zero: every block adds nothing to the residual
            weights[f"model.layers.{i}.{name}.weight"] = np.zeros(shape, np.float32)
        weights[f"model.layers.{i}.input_layernorm.weight"] = np.ones(hidden, np.float32)
        weights[f"model.layers.{i}.post_attention_layernorm.weight"] = np.ones(hidden, np.float32)
    return weights


def _save(file: Path, weights: dict[str, np.ndarray]) -> None:
    import mlx.core as mx

    mx.save_safetensors(str(file), {k: mx.array(v) for k, v in weights.items()},
                        metadata={"format": "mlx"})


def scripted_models(root: Path, tiny_dir: Path) -> dict[str, dict]:
    """A mapping with the tiny random model and the two scripted ones (built under `root`)."""
    think = build_scripted_model(root / "think", THINK_SCRIPT, THINK_TEMPLATE)
    tools = build_scripted_model(root / "tools", TOOLS_SCRIPT, TOOLS_TEMPLATE)
    return {"tiny": {"mlx": str(tiny_dir), "backend": "mlx"},
            "think": {"mlx": str(think), "backend": "mlx"},
            "tools": {"mlx": str(tools), "backend": "mlx"}}


def start_app(root: Path, models: dict[str, dict]):
    """An in-process app (running engine) serving `models` with no upstream."""
    from bridge.app import create_app
    from bridge.config import load_config

    from .conftest import write_mappings

    mappings = write_mappings(root / "map.yaml", models)
    app = create_app(load_config({}, mappings_path=mappings, home=root / "home", upstream="none"))
    app.extensions["bridge"].start()
    return app
