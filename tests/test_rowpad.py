"""Row padding of CPU matmuls (bridge/engine/rowpad.py): the rule, exact results, where it
applies, and a real engine whose batches of odd sizes answer as each request alone."""

from __future__ import annotations

import time

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from bridge.engine import Engine, blas, rowpad
from bridge.engine.models import LoadedModel
from bridge.engine.rowpad import PaddedEmbedding, PaddedLinear, RowPadding, install, padding_for

from .test_batching import run_alone, run_together, text_of

# MLX binds its BLAS at the first matmul of the process: the fast one, as in the engine (run
# alone, this file's first matmuls would otherwise bind the bundled one for the engine test too).
blas.enable()

OPENBLAS = blas.BlasInfo("openblas", "/x/libopenblas.so", threads=2)


@pytest.mark.parametrize(("threads", "expected"), [
    (2, {1: 1, 2: 2, 3: 8, 5: 8, 6: 8, 7: 8, 8: 8, 9: 9, 10: 10, 11: 16, 15: 16, 16: 16,
         17: 17, 19: 24, 65: 65, 66: 66, 67: 72}),
    (1, {1: 1, 2: 4, 3: 4, 4: 4, 5: 8, 9: 12, 13: 16}),
])
def test_rows_are_padded_to_the_panels_of_each_thread(threads, expected):
    padding = RowPadding(threads)
    assert {n: padding.rows(n) for n in expected} == expected


@pytest.mark.parametrize(("threads", "expected"), [
    (2, {1: 1, 2: 2, 3: 3, 4: 8, 5: 8, 11: 16}),
    (1, {1: 1, 2: 2, 3: 3, 4: 4, 5: 8, 6: 8}),
])
def test_rows_the_few_row_kernel_computes_are_never_padded(threads, expected):
    padding = RowPadding(threads, gemv_rows=3)  # 1-3 rows: the few-row kernel (blas_rows)
    assert {n: padding.rows(n) for n in expected} == expected


def test_padding_for_passes_the_shims_row_count_on():
    padding = padding_for(blas.BlasInfo("openblas", "/x/libopenblas.so", "Haswell", threads=1,
                                        gemv_rows=3), 1, "cpu")
    assert padding is not None and padding.gemv_rows == 3 and padding.rows(2) == 2


def test_the_block_follows_the_blas_thread_count():
    padding = RowPadding(2)
    assert padding.rows(6) == 8
    padding.follow(1)
    assert (padding.block, padding.rows(6)) == (4, 8)
    assert padding.rows(2) == 4
    padding.follow(2)
    assert (padding.rows(2), padding.rows(3)) == (2, 8)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 16), (3, 16), (6, 16), (7, 16), (9, 16), (2, 3, 16),
                                   (5, 1, 16), (0, 16)])
def test_a_padded_linear_layer_computes_what_the_plain_one_does(shape, bias):
    plain = nn.Linear(16, 24, bias=bias)
    padded = PaddedLinear(plain, RowPadding(2))
    x = mx.random.normal(shape)
    want, got = plain(x), padded(x)
    assert got.shape == want.shape == (*shape[:-1], 24)
    np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-5, atol=1e-5)
    assert padded.weight is plain.weight  # shared, not copied
    assert ("bias" in padded) == bias


def test_a_padded_embedding_pads_only_its_output_head():
    plain = nn.Embedding(50, 16)
    padded = PaddedEmbedding(plain, RowPadding(2))
    ids = mx.array([[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(np.array(padded(ids)), np.array(plain(ids)))
    for shape in [(6, 1, 16), (1, 1, 16)]:  # padded rows; one row (no detour)
        h = mx.random.normal(shape)
        np.testing.assert_allclose(np.array(padded.as_linear(h)), np.array(plain.as_linear(h)),
                                   rtol=1e-5, atol=1e-5)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(40, 32)
        self.layers = [nn.Linear(32, 32), nn.Linear(32, 64, bias=False)]
        self.quantized = nn.QuantizedLinear(64, 64, bits=4)
        self.norm = nn.RMSNorm(32)


def test_install_swaps_plain_linear_layers_and_embeddings_only_sharing_their_weights():
    model = Block()
    before = dict(model.parameters()["layers"][0])
    assert install(model, RowPadding(2)) == 3
    assert isinstance(model.layers[0], PaddedLinear) and isinstance(model.layers[1], PaddedLinear)
    assert isinstance(model.embed, PaddedEmbedding)
    assert type(model.quantized) is nn.QuantizedLinear  # its own kernel, not OpenBLAS's
    assert model.layers[0].weight is before["weight"]
    # The parameter tree (what memory accounting and weight loading see) is unchanged.
    assert set(dict(model.parameters()["layers"][0])) == {"weight", "bias"}


def test_half_precision_layers_are_left_alone():
    """bf16/f16 matmuls run on MLX's own kernels, where padded rows cost compute."""
    model = Block()
    model.set_dtype(mx.bfloat16)
    assert install(model, RowPadding(2)) == 0
    assert type(model.layers[0]) is nn.Linear and type(model.embed) is nn.Embedding


def test_a_failed_install_leaves_the_model_unpadded_and_loaded(monkeypatch, caplog):
    def broken(model, padding):
        raise RuntimeError("no")

    monkeypatch.setattr(rowpad, "install", broken)
    loaded = LoadedModel("/m", "m", Block(), tokenizer=None, size=0, context_length=8)
    loaded.pad_rows(RowPadding(2))  # no exception: padding is an optimisation
    assert loaded.rows is None
    assert "matmul rows not padded" in caplog.text


def test_padding_applies_only_to_openblas_on_x86_64_linux(monkeypatch):
    monkeypatch.delenv("MLX_BRIDGE_ROW_PAD", raising=False)
    monkeypatch.setattr(rowpad.sys, "platform", "linux")
    monkeypatch.setattr(rowpad.platform, "machine", lambda: "x86_64")
    assert padding_for(OPENBLAS, 2, "cpu").block == 8
    assert padding_for(OPENBLAS, 1, "cpu").block == 4
    assert padding_for(OPENBLAS, 2, "gpu") is None  # mlx[cuda]: MLX's own kernels
    for name in ("bundled", "custom", "platform"):
        assert padding_for(blas.BlasInfo(name), 2, "cpu") is None
    for core in ("Haswell", "Zen", ""):  # AVX2 kernels (and a core OpenBLAS did not name)
        assert padding_for(blas.BlasInfo("openblas", detail=core), 2, "cpu").block == 8
    for core in ("SkylakeX", "Cooperlake", "SapphireRapids"):  # AVX-512: no slow edge
        assert padding_for(blas.BlasInfo("openblas", detail=core), 2, "cpu") is None
    monkeypatch.setenv("MLX_BRIDGE_ROW_PAD", "on")  # asked for: padded on any core
    assert padding_for(blas.BlasInfo("openblas", detail="SkylakeX"), 2, "cpu").block == 8
    monkeypatch.setenv("MLX_BRIDGE_ROW_PAD", "off")
    assert padding_for(OPENBLAS, 2, "cpu") is None
    monkeypatch.setenv("MLX_BRIDGE_ROW_PAD", "on")
    assert padding_for(OPENBLAS, 2, "cpu") is not None
    monkeypatch.delenv("MLX_BRIDGE_ROW_PAD")
    monkeypatch.setattr(rowpad.platform, "machine", lambda: "aarch64")
    assert padding_for(OPENBLAS, 2, "cpu") is None
    monkeypatch.setattr(rowpad.platform, "machine", lambda: "arm64")
    monkeypatch.setattr(rowpad.sys, "platform", "darwin")  # Metal: MLX's own kernels
    assert padding_for(OPENBLAS, 2, "gpu") is None


PROMPTS6 = ["hello", "What is the capital of France?", "Once upon a time",
            "The quick brown fox jumps over the lazy dog", "Name a colour", "1 2 3 4"]


@pytest.fixture
def padded_engine(monkeypatch):
    monkeypatch.setenv("MLX_BRIDGE_ROW_PAD", "on")  # padded whatever OpenBLAS core runs here
    eng = Engine(keep_alive=300, max_loaded=2, max_queue=16, num_parallel=8, prompt_cache_bytes=0)
    eng.start()
    deadline = time.monotonic() + 60
    while eng.row_padding is None and time.monotonic() < deadline:
        if eng.device != "unknown" and eng.blas != "openblas":
            break  # MLX started without OpenBLAS: nothing is padded
        time.sleep(0.05)  # the engine thread decides the padding before its first load
    if eng.row_padding is not None:  # 4+ rows padded, though the few-row kernel computes them
        eng.row_padding.gemv_rows = min(eng.row_padding.gemv_rows, 3)
    yield eng
    eng.stop()


def test_a_real_engine_pads_and_batches_of_six_answer_as_each_alone(padded_engine,
                                                                    tiny_model_dir):
    """Six sequences (padded to 8 rows with 2 BLAS threads) and each one alone (1 row, never
    padded) give the same greedy answers; the loaded model's layers are the padded ones.
    (The few-row kernel sums each output in one order at any row count: bit-identical.)"""
    alone = run_alone(padded_engine, tiny_model_dir, PROMPTS6, n=40)
    if padded_engine.row_padding is None:
        pytest.skip(f"no row padding here (BLAS {padded_engine.blas})")
    loaded = next(iter(padded_engine.cache.models.values()))
    assert loaded.rows is padded_engine.row_padding
    layers = [m for _, m in loaded.model.named_modules() if isinstance(m, nn.Linear)]
    assert layers and all(isinstance(m, PaddedLinear) for m in layers)
    assert padded_engine.health()["row_block"] == padded_engine.row_padding.block
    assert padded_engine.health()["gemv_rows"] == padded_engine.gemv_rows  # the kernel's rows
    assert padded_engine.row_padding.rows(6) == 8  # the fixture pads 4+ rows
    jobs = run_together(padded_engine, tiny_model_dir, PROMPTS6, n=40)
    together = [(text_of([ev for _, ev in j.events.times]), j.events.times[-1][1].eval_count)
                for j in jobs]
    assert together == alone
