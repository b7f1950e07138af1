"""Rebuild a Hugging Face fast tokenizer (tokenizer.json, tokenizer_config.json) from GGUF."""

from __future__ import annotations

from typing import Any

from bridge.importer.errors import ImportFailed
from bridge.importer.gguf_file import GGUFFile

# llama.cpp token types (llama_token_type): which tokens are special to the tokenizer.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

_GPT2 = ("'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+")
_LLAMA3 = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}"
           "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
_QWEN2 = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}"
          "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
# tokenizer.ggml.pre -> (split regex or None for GPT-2's own, split digits one by one, NFC)
_BPE_PRE: dict[str, tuple[str | None, bool, bool]] = {
    "gpt2": (None, False, False),
    "default": (None, False, False),
    "smollm": (None, True, False),
    "llama-bpe": (_LLAMA3, False, False),
    "llama3": (_LLAMA3, False, False),
    "qwen2": (_QWEN2, False, True),
    "deepseek-r1-qwen": (_QWEN2, False, True),
}


def build_tokenizer(g: GGUFFile) -> tuple[str, dict[str, Any]]:
    """(tokenizer.json text, tokenizer_config.json dict) for the GGUF's vocabulary."""
    kind = g.get("tokenizer.ggml.model")
    tokens: list[str] = g.get("tokenizer.ggml.tokens") or []
    if not tokens:
        raise ImportFailed("GGUF has no tokenizer (tokenizer.ggml.tokens missing)")
    types: list[int] = g.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    if kind == "gpt2":
        tok = _bpe(g, tokens)
    elif kind == "llama":
        tok = _sentencepiece(g, tokens, types)
    else:
        raise ImportFailed(f"unsupported tokenizer model '{kind}' (supported: gpt2, llama)")
    _add_special(tok, tokens, types)
    _post_processor(g, tok, tokens)
    return tok.to_str(), _tokenizer_config(g, tokens)


def _bpe(g: GGUFFile, tokens: list[str]) -> Any:
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    pre = str(g.get("tokenizer.ggml.pre") or "default")
    if pre not in _BPE_PRE:
        raise ImportFailed(f"unsupported BPE pre-tokenizer '{pre}' "
                           f"(supported: {', '.join(_BPE_PRE)})")
    regex, digits, nfc = _BPE_PRE[pre]
    merges = [tuple(m.split(" ", 1)) for m in g.get("tokenizer.ggml.merges") or []]
    model = models.BPE(vocab=_vocab(tokens), merges=merges, fuse_unk=False, byte_fallback=False,
                       ignore_merges=regex == _LLAMA3)
    tok = Tokenizer(model)
    steps = []
    if digits:
        steps.append(pre_tokenizers.Digits(individual_digits=True))
    if regex:
        steps.append(pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False))
    steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=regex is None))
    tok.pre_tokenizer = pre_tokenizers.Sequence(steps)
    if nfc:
        tok.normalizer = normalizers.NFC()
    tok.decoder = decoders.ByteLevel()
    return tok


def _sentencepiece(g: GGUFFile, tokens: list[str], types: list[int]) -> Any:
    """SentencePiece BPE as Hugging Face converts it: merges by piece score, byte fallback."""
    from tokenizers import Tokenizer, decoders, models, normalizers

    scores: list[float] = g.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
    vocab = _vocab(tokens)
    unk = g.get("tokenizer.ggml.unknown_token_id")
    model = models.BPE(vocab=vocab, merges=_spm_merges(tokens, types, scores),
                       unk_token=tokens[int(unk)] if unk is not None else None,
                       fuse_unk=True, byte_fallback=True)
    tok = Tokenizer(model)
    prefix = bool(g.get("tokenizer.ggml.add_space_prefix", True))
    replace = normalizers.Replace(" ", "\u2581")
    tok.normalizer = (normalizers.Sequence([normalizers.Prepend("\u2581"), replace])
                      if prefix else replace)
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if prefix:
        steps.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(steps)
    return tok


def _spm_merges(tokens: list[str], types: list[int], scores: list[float]) -> list[tuple[str, str]]:
    """Every split of a normal piece in two pieces, best piece score first (HF generate_merges)."""
    normal = {t: i for i, t in enumerate(tokens) if types[i] == NORMAL}
    found: list[tuple[float, int, int, int, int, str, str]] = []
    for piece, pid in normal.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            li, ri = normal.get(left), normal.get(right)
            if li is not None and ri is not None:
                found.append((-scores[pid], len(left), len(right), li, ri, left, right))
    found.sort(key=lambda m: (m[0], -m[1], -m[2], m[3], m[4]))
    return [(m[5], m[6]) for m in found]


def _vocab(tokens: list[str]) -> dict[str, int]:
    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)  # a duplicated piece keeps its first id, as llama.cpp's map does
    return vocab


def _add_special(tok: Any, tokens: list[str], types: list[int]) -> None:
    """Control tokens become special added tokens; user-defined ones plain added tokens."""
    from tokenizers import AddedToken

    special = [AddedToken(t, special=True, normalized=False)
               for t, k in zip(tokens, types, strict=False) if k == CONTROL]
    user = [AddedToken(t, special=False, normalized=False)
            for t, k in zip(tokens, types, strict=False)
            if k == USER_DEFINED]
    tok.add_special_tokens(special)
    tok.add_tokens(user)


def _post_processor(g: GGUFFile, tok: Any, tokens: list[str]) -> None:
    """Prepend BOS (and append EOS) when the GGUF says llama.cpp would."""
    from tokenizers import processors

    gpt2 = g.get("tokenizer.ggml.model") == "gpt2"
    steps = [processors.ByteLevel(trim_offsets=False)] if gpt2 else []
    bos, eos = _token(g, tokens, "bos"), _token(g, tokens, "eos")
    add_bos = bool(g.get("tokenizer.ggml.add_bos_token", False)) and bos is not None
    add_eos = bool(g.get("tokenizer.ggml.add_eos_token", False)) and eos is not None
    if add_bos or add_eos:
        head = [f"{bos[0]}:0"] if add_bos else []
        tail = [f"{eos[0]}:0"] if add_eos else []
        specials = [t for t in (bos if add_bos else None, eos if add_eos else None) if t]
        steps.append(processors.TemplateProcessing(
            single=[*head, "$A:0", *tail], pair=[*head, "$A:0", *tail, *head, "$B:1", *tail],
            special_tokens=list(dict.fromkeys(specials)),
        ))
    if steps:
        tok.post_processor = steps[0] if len(steps) == 1 else processors.Sequence(steps)


def _token(g: GGUFFile, tokens: list[str], kind: str) -> tuple[str, int] | None:
    tid = g.get(f"tokenizer.ggml.{kind}_token_id")
    if tid is None or not 0 <= int(tid) < len(tokens):
        return None
    return tokens[int(tid)], int(tid)


def _tokenizer_config(g: GGUFFile, tokens: list[str]) -> dict[str, Any]:
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(g.arch_get("context_length") or 2048),
        "add_bos_token": bool(g.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(g.get("tokenizer.ggml.add_eos_token", False)),
    }
    for kind, key in (("bos", "bos_token"), ("eos", "eos_token"), ("unknown", "unk_token"),
                      ("padding", "pad_token")):
        found = _token(g, tokens, kind)
        if found:
            config[key] = found[0]
    template = g.get("tokenizer.chat_template")
    if isinstance(template, str) and template:
        config["chat_template"] = template
    return config
