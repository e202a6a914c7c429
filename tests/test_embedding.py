"""SentenceEmbedder: agreement with sentence-transformers, order, batching, the cache, int8, bf16 and ONNX paths."""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from backend.cold_start import onnx_export
from backend.cold_start.embedder import SentenceEmbedder
from training.encoder import on_torch_thread

TEXTS = [
    "Russia and China signed a pact in Beijing.",
    "",
    "Russia 😀 and China 🇷🇺 signed “a pact” — پیمان روسیه و چین — said NATO.",
    "NATO " * 400,  # longer than max_length: truncated like sentence-transformers does
    "Sanctions hit trade.",
    "A much longer paragraph about the summit, the Olympics and the diplomatic boycott announced by Washington.",
]


@pytest.fixture(scope="module")
def embedder() -> SentenceEmbedder:
    return SentenceEmbedder(threads=2)


@pytest.fixture(scope="module")
def paragraphs(sample_tasks) -> list[str]:
    return [task["text"] for task in sample_tasks]


@pytest.fixture(scope="module")
def fp32_paragraphs(embedder: SentenceEmbedder, paragraphs: list[str]) -> np.ndarray:
    return embedder.embed(paragraphs)


def test_matches_sentence_transformers(embedder: SentenceEmbedder):
    st = pytest.importorskip("sentence_transformers")
    reference = st.SentenceTransformer(embedder.path, device="cpu").encode(TEXTS, batch_size=4)
    ours = embedder.embed(TEXTS)
    reference = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    assert (ours * reference).sum(axis=1).min() > 0.999


def test_shape_dtype_unit_norm_and_empty_input(embedder: SentenceEmbedder):
    vectors = embedder.embed(TEXTS)
    assert vectors.shape == (len(TEXTS), embedder.dim) == (len(TEXTS), 384)
    assert vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.embed([]).shape == (0, embedder.dim)
    assert np.isfinite(embedder.embed([""])).all()


def test_rows_follow_input_order_whatever_the_batching(embedder: SentenceEmbedder, monkeypatch):
    embedder.clear_cache()
    one_by_one = np.stack([embedder.embed([text])[0] for text in TEXTS])
    embedder.clear_cache()
    monkeypatch.setattr(embedder, "batch_size", 2)  # length buckets of 2: the long text and the empty one apart
    order = [3, 0, 5, 1, 4, 2]
    assert np.allclose(embedder.embed([TEXTS[i] for i in order]), one_by_one[order], atol=1e-5)
    embedder.clear_cache()
    monkeypatch.undo()
    assert np.allclose(embedder.embed(TEXTS[::-1]), one_by_one[::-1], atol=1e-5)


def test_deterministic(embedder: SentenceEmbedder):
    embedder.clear_cache()
    first = embedder.embed(TEXTS)
    embedder.clear_cache()
    assert np.array_equal(first, embedder.embed(TEXTS))


def test_cache_skips_the_model_and_stays_bounded(embedder: SentenceEmbedder, monkeypatch):
    embedder.clear_cache()
    first = embedder.embed(TEXTS[:3])
    assert embedder.cache_info() == {"hits": 0, "misses": 3, "size": 3, "maxsize": 4096}

    def no_model(texts):
        raise AssertionError(f"re-encoded {texts!r}")

    monkeypatch.setattr(embedder, "_encode", no_model)
    again = embedder.embed([TEXTS[2], TEXTS[0], TEXTS[1], TEXTS[0]])
    assert np.array_equal(again, first[[2, 0, 1, 0]])
    assert embedder.cache_info()["hits"] == 4
    monkeypatch.undo()

    calls = []
    original = embedder._encode
    monkeypatch.setattr(embedder, "_encode", lambda texts: calls.append(list(texts)) or original(texts))
    embedder.embed(["dup", "dup", TEXTS[0], "dup"])
    assert calls == [["dup"]]  # duplicates inside one call are encoded once, cached texts not at all

    monkeypatch.undo()
    embedder.clear_cache()
    monkeypatch.setattr(embedder, "cache_size", 2)
    embedder.embed(["a", "b"])
    embedder.embed(["a"])  # "a" is now the most recently used
    embedder.embed(["c"])  # evicts "b"
    assert list(embedder._cache) == ["a", "c"]
    assert embedder.cache_info()["size"] == 2
    out = embedder.embed(["a"])
    out[0, 0] = 42.0  # callers cannot corrupt the cache through a returned array
    assert embedder._cache["a"][0] != 42.0
    embedder.clear_cache()


def test_rejects_a_bare_string_and_non_strings(embedder: SentenceEmbedder):
    with pytest.raises(TypeError, match="sequence of strings"):
        embedder.embed("a paragraph")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        embedder.embed(["ok", None])  # type: ignore[list-item]


def test_quantized_agrees_with_fp32(paragraphs: list[str], fp32_paragraphs: np.ndarray):
    quantized = SentenceEmbedder(quantize=True, threads=2)
    assert quantized.quantized
    q = quantized.embed(paragraphs)
    assert q.shape == fp32_paragraphs.shape and q.dtype == np.float32
    cosine = (q * fp32_paragraphs).sum(axis=1)
    assert cosine.mean() > 0.98
    assert cosine.min() > 0.95
    assert np.isfinite(quantized.embed(["", "😀"])).all()


# ---- runtimes and precisions: torch bf16, ONNX Runtime fp32/int8, the on-disk graph cache and the fallback ----

onnxruntime = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def onnx_fp32(onnx_cache: Path) -> SentenceEmbedder:
    return SentenceEmbedder(runtime="onnx", precision="fp32", threads=2, onnx_cache_dir=onnx_cache)


def test_onnx_fp32_matches_torch(onnx_fp32: SentenceEmbedder, embedder: SentenceEmbedder, paragraphs: list[str]):
    assert (onnx_fp32.runtime, onnx_fp32.precision, onnx_fp32.fallback_reason) == ("onnx", "fp32", None)
    assert onnx_fp32.model is None and onnx_fp32.describe() == "onnx fp32"
    embedder.clear_cache()
    texts = [*TEXTS, *paragraphs[:20]]
    ours, reference = onnx_fp32.embed(texts), embedder.embed(texts)
    assert ours.shape == reference.shape and ours.dtype == np.float32
    assert np.allclose(ours, reference, atol=1e-4)  # the empty text, emoji, Persian and truncation included
    assert onnx_fp32.embed([]).shape == (0, 384)
    # a batch's composition does not change a text's vector (beyond float noise)
    alone = np.stack([onnx_fp32.embed([t])[0] for t in TEXTS[:3]])
    onnx_fp32.clear_cache()
    assert np.allclose(alone, onnx_fp32.embed(TEXTS)[:3], atol=1e-5)


def test_onnx_int8_stays_close_to_fp32(onnx_cache: Path, onnx_fp32, paragraphs: list[str], fp32_paragraphs):
    int8 = SentenceEmbedder(runtime="onnx", precision="int8", threads=2, onnx_cache_dir=onnx_cache)
    assert (int8.runtime, int8.precision, int8.quantized) == ("onnx", "int8", True)
    assert int8.onnx_path != onnx_fp32.onnx_path and int8.onnx_path.stat().st_size < onnx_fp32.onnx_path.stat().st_size
    cosine = (int8.embed(paragraphs) * fp32_paragraphs).sum(axis=1)
    assert cosine.mean() > 0.99 and cosine.min() > 0.98  # torch int8 reaches 0.988 / 0.976
    assert np.allclose(np.linalg.norm(int8.embed(TEXTS), axis=1), 1.0, atol=1e-5)
    # activation scales are per tensor: one text per pass, so batch-mates and padding never change a vector
    assert int8.batch_size == 1
    int8.clear_cache()
    together = int8.embed(TEXTS)
    int8.clear_cache()
    assert np.array_equal(np.stack([int8.embed([text])[0] for text in TEXTS]), together)


def test_int8_quantizes_a_private_copy_of_the_cached_fp32_graph(tmp_path: Path, onnx_fp32, monkeypatch):
    """onnxruntime writes "<input>-inferred.onnx" beside its input: on the shared cached graph, two processes exporting
    at once broke each other's export (seen: FileNotFoundError / "Failed to find proper ai.onnx domain")."""
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copyfile(onnx_fp32.onnx_path, cache / onnx_fp32.onnx_path.name)  # the fp32 graph is already cached
    sources = []
    real_quantize = onnx_export._quantize
    monkeypatch.setattr(
        onnx_export, "_quantize", lambda source, target: sources.append(source) or real_quantize(source, target)
    )
    target = onnx_export.onnx_encoder_file(onnx_fp32.path, "int8", cache)
    [source] = sources
    assert source.parent.parent == cache and source.parent.name.startswith(".export-")  # the staging folder
    assert sorted(p.name for p in cache.iterdir()) == sorted([onnx_fp32.onnx_path.name, target.name])


def test_torch_bf16_stays_close_to_fp32(paragraphs: list[str], fp32_paragraphs: np.ndarray):
    bf16 = SentenceEmbedder(precision="bf16", threads=2)
    assert bf16.describe() == "torch bf16" and next(bf16.model.parameters()).dtype == torch.bfloat16
    vectors = bf16.embed(paragraphs[:30])
    assert vectors.dtype == np.float32
    assert (vectors * fp32_paragraphs[:30]).sum(axis=1).min() > 0.999


def test_cached_graph_is_reused_not_exported_again(onnx_cache: Path, onnx_fp32, monkeypatch):
    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx_export, "export_onnx_encoder", no_export)
    again = SentenceEmbedder(runtime="onnx", precision="fp32", onnx_cache_dir=onnx_cache)
    assert again.runtime == "onnx" and again.onnx_path == onnx_fp32.onnx_path
    assert sorted(p.name for p in onnx_cache.iterdir()) == sorted(
        p.name for p in onnx_cache.glob("*.onnx")
    )  # no staging folders left behind


def test_cache_file_appears_atomically(tmp_path: Path, onnx_fp32, monkeypatch):
    """The graph is staged inside the cache folder (same file system) and renamed into place, never written there."""
    cache = tmp_path / "cache"
    renames = []
    real_replace = os.replace

    def staged_export(path, folder, precision="fp32", fp32_graph=None):
        staged = folder / "graph.onnx"
        shutil.copyfile(onnx_fp32.onnx_path, staged)
        assert not list(cache.glob("*.onnx"))  # nothing visible while the graph is being written
        return staged

    def spy_replace(src, dst):
        renames.append((Path(src), Path(dst), Path(dst).exists()))
        real_replace(src, dst)

    monkeypatch.setattr(onnx_export, "export_onnx_encoder", staged_export)
    monkeypatch.setattr(onnx_export.os, "replace", spy_replace)
    target = onnx_export.onnx_encoder_file(onnx_fp32.path, "fp32", cache)
    [(src, dst, existed)] = renames
    assert dst == target and not existed and target.is_file()
    assert src.parent.parent == cache and src.parent.name.startswith(".export-")
    assert [p.name for p in cache.iterdir()] == [target.name]  # the staging folder is gone


def test_failed_export_falls_back_to_torch_fp32_and_leaves_no_file(tmp_path: Path, monkeypatch, caplog):
    def broken(path, folder, precision="fp32", fp32_graph=None):
        (folder / "half-written.onnx").write_bytes(b"\0" * 100)
        raise RuntimeError("cannot export this encoder")

    monkeypatch.setattr(onnx_export, "export_onnx_encoder", broken)
    with caplog.at_level(logging.WARNING, logger="backend.cold_start.embedder"):
        fallback = SentenceEmbedder(runtime="onnx", precision="int8", onnx_cache_dir=tmp_path / "cache")
    assert (fallback.runtime, fallback.precision, fallback.session) == ("torch", "fp32", None)
    assert "cannot export this encoder" in fallback.fallback_reason
    assert "using torch fp32" in caplog.text and "cannot export" in caplog.text
    assert fallback.describe().startswith("torch fp32 (fallback: RuntimeError")
    assert not list((tmp_path / "cache").rglob("*.onnx"))  # nothing half-written is left for the next start
    assert fallback.embed(["Russia and China signed a pact."]).shape == (1, 384)


def test_missing_onnxruntime_falls_back_to_torch_fp32(tmp_path: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    fallback = SentenceEmbedder(runtime="onnx", precision="fp32", onnx_cache_dir=tmp_path)
    assert (fallback.runtime, fallback.precision) == ("torch", "fp32")
    assert fallback.fallback_reason.startswith("onnxruntime is not installed")


def test_cache_key_follows_the_encoder_files(tmp_path: Path):
    folder = tmp_path / "encoder"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights")
    key = onnx_export.onnx_cache_key(str(folder), "fp32")
    assert key == onnx_export.onnx_cache_key(str(folder), "fp32")
    assert key != onnx_export.onnx_cache_key(str(folder), "int8")
    stat = (folder / "model.safetensors").stat()
    os.utime(folder / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert onnx_export.onnx_cache_key(str(folder), "fp32") != key  # retrained weights: a new graph


def test_rejects_unknown_runtime_and_precision():
    with pytest.raises(ValueError, match="runtime"):
        SentenceEmbedder(runtime="tensorrt")
    with pytest.raises(ValueError, match="precision"):
        SentenceEmbedder(precision="fp8")
    with pytest.raises(ValueError, match="onnx runtime supports"):
        SentenceEmbedder(runtime="onnx", precision="bf16")


def test_torch_inference_runs_on_one_thread_whoever_calls(embedder: SentenceEmbedder, monkeypatch):
    """Request threads hand torch work to one thread (one OpenMP team); a nested call does not deadlock."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    seen = set()
    original = embedder._encode_torch

    def spy(texts):
        seen.add(threading.get_ident())
        return original(texts)

    monkeypatch.setattr(embedder, "_encode_torch", spy)
    embedder.clear_cache()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: embedder.embed([f"text number {i}"]), range(8)))
    assert len(seen) == 1 and threading.get_ident() not in seen
    assert all(r.shape == (1, 384) for r in results)
    assert on_torch_thread(on_torch_thread, lambda: 42) == 42
