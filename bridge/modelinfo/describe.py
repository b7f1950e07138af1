"""Describe a local MLX model directory (Hugging Face layout) for /api/tags, /api/ps and /api/show.

Pure Python: reads config.json, tokenizer files and safetensors headers; never imports mlx.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from bridge.modelinfo.dir_scan import DirScan, scan_dir
from bridge.modelinfo.safetensors import (
    count_parameters,
    dominant_float_type,
    quantization,
    read_tensors,
    weight_files,
)
from bridge.modelinfo.tokenizer import (
    chat_template,
    default_parameters,
    read_json,
    template_capabilities,
    think_switches,
)
from bridge.modelinfo.vision import is_vision_config

DEFAULT_CONTEXT_LENGTH = 2048
_FAMILIES = {
    "gemma3_text": "gemma3",
    "qwen2_moe": "qwen2moe",
    "qwen3_moe": "qwen3moe",
    "gpt_oss": "gptoss",
    "phi": "phi2",
    "cohere": "command-r",
}
_SUBCONFIGS = ("text_config", "llm_config", "language_config")
_CONTEXT_KEYS = ("max_position_embeddings", "max_sequence_length", "n_positions", "seq_length")
_INFO_FIELDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("context_length", _CONTEXT_KEYS),
    ("embedding_length", ("hidden_size", "d_model", "n_embd")),
    ("block_count", ("num_hidden_layers", "n_layer", "num_layers")),
    ("feed_forward_length", ("intermediate_size", "n_inner")),
    ("attention.head_count", ("num_attention_heads", "n_head")),
    ("attention.head_count_kv", ("num_key_value_heads",)),
    ("attention.key_length", ("head_dim",)),
    ("attention.value_length", ("head_dim",)),
    ("attention.layer_norm_rms_epsilon", ("rms_norm_eps",)),
    ("attention.sliding_window", ("sliding_window",)),
    ("rope.freq_base", ("rope_theta",)),
    ("expert_count", ("num_experts", "num_local_experts")),
    ("expert_used_count", ("num_experts_per_tok",)),
    ("vocab_size", ("vocab_size",)),
)
_ENCODER_TYPES = {
    "bert",
    "roberta",
    "xlm-roberta",
    "nomic_bert",
    "modernbert",
    "distilbert",
    "mpnet",
}
_SENTENCE_TRANSFORMER_FILES = ("modules.json", "config_sentence_transformers.json")


@dataclass(frozen=True)
class ModelDescription:
    """Everything /api/tags, /api/ps and /api/show report about one model directory."""

    size: int
    digest: str
    modified_at: datetime
    details: dict[str, Any]
    model_info: dict[str, Any]
    capabilities: list[str]
    template: str
    parameters: str
    context_length: int
    tensors: list[dict[str, Any]]
    architecture: str
    parameter_count: int
    system: str = ""
    # The reasoning switches the chat template reads (modelinfo/tokenizer.THINK_SWITCHES).
    think_switches: tuple[str, ...] = ()


def format_parameter_size(n: int) -> str:
    """Ollama's HumanNumber: 1000-based K/M/B with 0, 2 (M) or 1 (B) decimals.

    >>> [format_parameter_size(n) for n in (134515008, 494032768, 3212749824, 8030261248)]
    ['134.52M', '494.03M', '3.2B', '8.0B']
    >>> [format_parameter_size(n) for n in (999, 1000, 1_500, 7_000_000, 7_000_000_000)]
    ['999', '1K', '2K', '7M', '7B']
    """
    for unit, suffix, decimals in ((10**9, "B", 1), (10**6, "M", 2)):
        if n >= unit:
            value = n / unit
            return f"{value:.{0 if value == math.floor(value) else decimals}f}{suffix}"
    return f"{n / 1000:.0f}K" if n >= 1000 else str(n)


def format_parameters(params: Mapping[str, list[Any]]) -> str:
    """Ollama's /api/show `parameters` text: sorted keys padded to 30, one line per value.

    >>> format_parameters({"temperature": [0.6], "stop": ["<|im_end|>"]})
    'stop                           "<|im_end|>"\\ntemperature                    0.6'
    >>> print(format_parameters({"top_k": [20], "repeat_penalty": [1.0], "stop": ["a", 'b"']}))
    repeat_penalty                 1
    stop                           "a"
    stop                           "b\\""
    top_k                          20
    """
    return "\n".join(
        f"{key:<30} {_go_value(value)}" for key in sorted(params) for value in params[key]
    )


def _go_value(value: Any) -> str:
    """Render one value as Go's %#v does for JSON-decoded values."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _go_float(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return json.dumps(value, ensure_ascii=False, default=str)


def _go_float(x: float) -> str:
    """Go's shortest %v float (strconv 'g', -1): plain unless the exponent is < -4 or >= 6."""
    if not math.isfinite(x):
        return "NaN" if math.isnan(x) else ("+Inf" if x > 0 else "-Inf")
    d = Decimal(repr(x)).normalize()
    if d.is_zero():
        return "-0" if math.copysign(1.0, x) < 0 else "0"
    exponent = d.adjusted()
    if -4 <= exponent < 6:
        return format(d, "f")
    sign, digits, _ = d.as_tuple()
    mantissa = str(digits[0]) + ("." + "".join(map(str, digits[1:])) if len(digits) > 1 else "")
    return f"{'-' if sign else ''}{mantissa}e{'-' if exponent < 0 else '+'}{abs(exponent):02d}"


def is_model_dir(path: str | os.PathLike[str]) -> bool:
    """True when the directory has config.json and at least one *.safetensors file."""
    root = Path(path)
    return (root / "config.json").is_file() and any(p.is_file() for p in root.glob("*.safetensors"))


def describe_model(path: str | os.PathLike[str]) -> ModelDescription:
    """Describe the model directory at `path` from its own files."""
    root = _model_root(path)
    scan = scan_dir(root)
    config_bytes = _read_config_bytes(root)
    return _describe(root, scan, config_bytes, scan.digest(config_bytes))


class DescriptionCache:
    """Thread-safe memo of describe_model keyed by (realpath, file fingerprint digest)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], ModelDescription] = {}

    def get(self, path: str | os.PathLike[str]) -> ModelDescription:
        """Return the cached description, rebuilding it when any file changed."""
        root = _model_root(path)
        scan = scan_dir(root)
        config_bytes = _read_config_bytes(root)
        key = (str(root), scan.digest(config_bytes))
        with self._lock:
            hit = self._entries.get(key)
        if hit is not None:
            return hit
        description = _describe(root, scan, config_bytes, key[1])
        with self._lock:
            for stale in [k for k in self._entries if k[0] == key[0]]:
                del self._entries[stale]
            self._entries[key] = description
        return description

    def clear(self) -> None:
        """Forget every cached description."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


def _model_root(path: str | os.PathLike[str]) -> Path:
    """Resolve symlinks; ValueError unless it is a directory."""
    root = Path(os.path.realpath(path))
    if not root.is_dir():
        raise ValueError(f"not a model directory: {path}")
    return root


def _read_config_bytes(root: Path) -> bytes:
    """Raw config.json; ValueError naming the directory when it cannot be read."""
    try:
        return (root / "config.json").read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read config.json in {root}: {exc}") from exc


def _parse_config(root: Path, raw: bytes) -> dict[str, Any]:
    """Parse config.json; ValueError naming the directory unless it is a JSON object."""
    try:
        config = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"unparsable config.json in {root}: {exc}") from exc
    if not isinstance(config, dict):
        raise ValueError(f"unparsable config.json in {root}: not a JSON object")
    return config


def _describe(root: Path, scan: DirScan, config_bytes: bytes, digest: str) -> ModelDescription:
    """Assemble the description from already-scanned files."""
    config = _parse_config(root, config_bytes)
    tensors = read_tensors(weight_files(root))
    quant = quantization(config)
    count = count_parameters(tensors, quant)
    family = _family(config)
    context_length = int(_config_number(config, _CONTEXT_KEYS) or DEFAULT_CONTEXT_LENGTH)
    level = f"Q{quant['bits']}" if quant else dominant_float_type(tensors, config)
    tok_cfg = read_json(root / "tokenizer_config.json")
    template = chat_template(root, tok_cfg)
    ollama = _ollama_notes(root)
    details = {
        "parent_model": "",
        "format": "safetensors",
        "family": family,
        "families": [family],
        "parameter_size": format_parameter_size(count),
        "quantization_level": level,
        "context_length": context_length,
        "embedding_length": int(_config_number(config, ("hidden_size", "d_model", "n_embd")) or 0),
    }
    params = default_parameters(root, tok_cfg, read_json(root / "generation_config.json"))
    if ollama.get("params"):
        params = {k: v if isinstance(v, list) else [v] for k, v in ollama["params"].items()}
    return ModelDescription(
        size=scan.size,
        digest=digest,
        modified_at=scan.modified_at,
        details=details,
        model_info=_model_info(config, family, count),
        capabilities=_capabilities(root, config, template),
        # Ollama's own template when it is what the Jinja renders (`ollama show` showed it)
        template=ollama["template"] if ollama.get("template_converted") else template,
        parameters=format_parameters(params),
        context_length=context_length,
        tensors=tensors,
        architecture=family,
        parameter_count=count,
        system=str(ollama.get("system") or ""),
        think_switches=think_switches(template),
    )


def _ollama_notes(root: Path) -> dict[str, Any]:
    """What an import from the Ollama store recorded: template, system, params (ollama_meta)."""
    notes = read_json(root / "mlx_bridge_import.json").get("ollama")
    return notes if isinstance(notes, dict) else {}


def _sections(config: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The top-level config, then nested text configs, then their rope_parameters."""
    sections = [config] + [config[k] for k in _SUBCONFIGS if isinstance(config.get(k), dict)]
    ropes = [s["rope_parameters"] for s in sections if isinstance(s.get("rope_parameters"), dict)]
    return sections + ropes


def _config_number(config: Mapping[str, Any], keys: tuple[str, ...]) -> int | float | None:
    """First positive number under any of `keys`, top level before nested sections."""
    for section in _sections(config):
        for key in keys:
            value = section.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
                return value
    return None


def _family(config: Mapping[str, Any]) -> str:
    """Ollama family name from model_type (or the first architectures entry)."""
    for section in _sections(config):
        if isinstance(section.get("model_type"), str) and section["model_type"]:
            return _FAMILIES.get(section["model_type"], section["model_type"])
    archs = config.get("architectures")
    if isinstance(archs, list) and archs and isinstance(archs[0], str):
        name = archs[0].lower()
        return re.sub(r"(forcausallm|forconditionalgeneration|model)$", "", name) or name
    return ""


def _model_info(config: Mapping[str, Any], arch: str, count: int) -> dict[str, Any]:
    """GGUF-style KV map holding only the values the config actually has."""
    info: dict[str, Any] = {"general.architecture": arch}
    if count:
        info["general.parameter_count"] = count
    for suffix, keys in _INFO_FIELDS:
        value = _config_number(config, keys)
        if value is not None:
            info[f"{arch}.{suffix}"] = value
    return info


def _capabilities(root: Path, config: Mapping[str, Any], template: str) -> list[str]:
    """Ollama capability names inferred from the config and the chat template."""
    if _is_embedding_model(root, config):
        return ["embedding"]
    vision = ["vision"] if is_vision_config(config) else []  # served through mlx-vlm
    return ["completion", *vision, *template_capabilities(template)]


def _is_embedding_model(root: Path, config: Mapping[str, Any]) -> bool:
    """Encoder-only architectures and sentence-transformers exports only embed."""
    if config.get("model_type") in _ENCODER_TYPES:
        return True
    return any((root / name).is_file() for name in _SENTENCE_TRANSFORMER_FILES)
