"""GGUF file -> MLX model directory (Hugging Face layout that mlx_lm.load reads)."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bridge.importer import ollama_meta
from bridge.importer.arch import Arch, get_arch, hf_name, to_hf
from bridge.importer.chat_templates import upgrade
from bridge.importer.errors import ImportFailed
from bridge.importer.gguf_file import GGUFFile, GGUFTensor
from bridge.importer.hf_config import build_config, eos_token_ids
from bridge.importer.ollama_meta import OllamaMeta
from bridge.importer.safetensors_out import DTYPES, PlannedTensor, write_model
from bridge.importer.tokenizer import build_tokenizer

log = logging.getLogger(__name__)

# progress(stage, done, total): stage names the step, done/total count bytes (or 0/0 if unknown).
Progress = Callable[[str, int, int], None]
QUANTIZE_CHOICES = ("auto", "none", "8", "4")


def _no_progress(stage: str, done: int, total: int) -> None:
    pass


def default_dtype(arch: Arch, platform: str = sys.platform) -> str:
    """float32 on Linux (MLX's CPU kernels are slow for half types); half precision on Metal.

    >>> default_dtype(get_arch("llama"), "linux"), default_dtype(get_arch("llama"), "darwin")
    ('float32', 'float16')
    >>> default_dtype(get_arch("gemma3"), "darwin")  # Gemma's activations overflow float16
    'bfloat16'
    """
    if platform != "darwin":
        return "float32"
    return "bfloat16" if arch.model_type.startswith("gemma") else "float16"


def convert_gguf(path: Path, out: Path, *, dtype: str | None = None,
                 progress: Progress = _no_progress, provenance: dict[str, Any] | None = None,
                 meta: OllamaMeta | None = None) -> dict[str, Any]:
    """Write the float model for `path` into the existing empty directory `out`; returns config.

    `meta`: the Ollama manifest's template, system and params when the GGUF came from its store.
    """
    progress("reading GGUF", 0, 0)
    g = GGUFFile(path)
    arch = get_arch(g.architecture)
    g.check_types()
    dtype = dtype or default_dtype(arch)
    config = build_config(g, arch)
    plan = plan_tensors(g, arch, config)
    progress("writing tokenizer", 0, 0)
    tokenizer_json, tokenizer_config = build_tokenizer(g)
    notes = chat_template(g, tokenizer_config, meta)
    (out / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
    _write_json(out / "tokenizer_config.json", tokenizer_config)
    total = sum(t.source_bytes for t in plan)
    done = 0

    def advance(t: PlannedTensor) -> None:
        nonlocal done
        done += t.source_bytes
        progress("converting tensors", done, total)

    progress("converting tensors", 0, total)
    write_model(out, plan, DTYPES[dtype], advance)
    config["torch_dtype"] = dtype
    _write_json(out / "config.json", config)
    _write_json(out / "generation_config.json", _generation_config(g))
    _write_json(out / "mlx_bridge_import.json", {
        **(provenance or {}), "gguf": str(path), "architecture": arch.gguf_name,
        "gguf_types": g.file_type_counts(), "dtype": dtype, **notes,
    })
    return config


def chat_template(g: GGUFFile, tokenizer_config: dict[str, Any],
                  meta: OllamaMeta | None) -> dict[str, Any]:
    """Pick the chat template: Ollama's own (converted), else the GGUF's, made tool-capable for
    the families whose Ollama template has tools. Returns notes for mlx_bridge_import.json."""
    notes: dict[str, Any] = {}
    if meta is not None:
        notes["ollama"] = ollama_meta.apply(tokenizer_config, meta)
        if notes["ollama"].get("template_converted"):
            return notes
    names = [str(g.get(k) or "") for k in ("general.basename", "general.name")]
    family = upgrade(tokenizer_config, names)
    if family:
        log.info("chat template made tool-capable family=%s", family)
        notes["tool_template"] = family
    return notes


def plan_tensors(g: GGUFFile, arch: Arch, config: dict[str, Any]) -> list[PlannedTensor]:
    """Every output tensor with its Hugging Face name and the transform that produces it."""
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    plan, seen = [], set()
    for t in g.iter_tensors():
        name = hf_name(arch, t.name)
        if name is None:
            continue
        if name in seen:
            raise ImportFailed(f"duplicate tensor {t.name} in GGUF")
        seen.add(name)
        producer = _producer(arch, name, t, heads, kv_heads)
        plan.append(PlannedTensor(name, t.shape, producer, t.nbytes))
    missing = [n for n in ("model.embed_tokens.weight", "model.norm.weight") if n not in seen]
    if missing:
        raise ImportFailed(f"GGUF lacks required tensors: {', '.join(missing)}")
    return plan


def _producer(arch: Arch, name: str, t: GGUFTensor, heads: int, kv_heads: int) -> Callable[[], Any]:
    return lambda: to_hf(arch, name, t.to_numpy(), heads, kv_heads)


def _generation_config(g: GGUFFile) -> dict[str, Any]:
    out: dict[str, Any] = {}
    bos = g.get("tokenizer.ggml.bos_token_id")
    if bos is not None:
        out["bos_token_id"] = int(bos)
    eos = eos_token_ids(g)
    if eos:
        out["eos_token_id"] = eos if len(eos) > 1 else eos[0]
    return out


def quantize_dir(src: Path, out: Path, bits: int, progress: Progress = _no_progress) -> None:
    """mlx-lm's affine quantization (group size 64) of a float model directory into `out`."""
    from mlx_lm import convert  # MLX only here: the CLI process, never a server thread

    progress(f"quantizing to {bits}-bit", 0, 0)
    if out.exists():
        shutil.rmtree(out)
    convert(hf_path=str(src), mlx_path=str(out), quantize=True, q_bits=bits, q_group_size=64)
    for extra in ("mlx_bridge_import.json", "generation_config.json"):
        if (src / extra).is_file() and not (out / extra).exists():
            shutil.copy2(src / extra, out / extra)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
