"""SentenceEmbedder: agreement with sentence-transformers, order, batching, the cache and the int8 path."""

from __future__ import annotations

import numpy as np
import pytest

from training.embedding import SentenceEmbedder

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
