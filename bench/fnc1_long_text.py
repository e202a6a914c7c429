"""What reading a long body costs and gains: FNC-1 bodies cut five ways, under the trained model's embedding head.

FNC-1 bodies run to hundreds of words; the encoder reads at most 512 tokens, and every token costs. Each way of
reading a body gives one vector per body; the embedding head of a paired dimension (training/pairs.py: body,
headline, product, difference, cosine; class-balanced logistic regression, C = 3, as training/embedding_heads.py)
is fitted on the training pairs and scored on the held-out pairs of bench/train_fnc1.py's body-grouped split:

  head-128 / head-256 / head-512   the first N tokens (256: the product's default, embedding_heads.MAX_LENGTH)
  head+tail-256                    the first 128 and the last 128 tokens
  top-3 sentences                  the mean of the 3 sentences most similar to the headline (each sentence
                                   embedded alone), plus the best sentence's cosine as one more feature

Printed per way: macro-F1 and per-class F1 (x100) and the seconds spent embedding the training bodies.
Run: .venv/bin/python bench/fnc1_long_text.py [--train-pairs 2000] [--test-pairs 2000] [--seeds 42,7,13]
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LABELS = ("agree", "disagree", "discuss", "unrelated")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def main() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from transformers import AutoModel, AutoTokenizer

    from bench.train_fnc1 import DATA, read_pairs, split_by_body
    from training.embedding_heads import C_EMBEDDING, text_embeddings
    from training.encoder import resolve_encoder_path
    from training.pairs import SIMILARITY_SCALE, embedding_pair

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-pairs", type=int, default=2000)
    parser.add_argument("--test-pairs", type=int, default=2000)
    parser.add_argument("--seeds", default="42,7,13", help="each draws its own training sample")
    args = parser.parse_args()

    train_pool, test_pool = split_by_body(read_pairs(DATA), 0)
    test = random.Random(1).sample(test_pool, args.test_pairs)
    samples = {int(s): random.Random(int(s)).sample(train_pool, args.train_pairs) for s in args.seeds.split(",")}
    path = resolve_encoder_path(None)
    tokenizer, encoder = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()

    def embed(texts: list[str], max_length: int = 256) -> dict[str, np.ndarray]:
        distinct = list(dict.fromkeys(texts))
        return dict(zip(distinct, text_embeddings(encoder, tokenizer, distinct, max_length=max_length), strict=True))

    def head_tail(text: str) -> str:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return text if len(ids) <= 254 else tokenizer.decode(ids[:127] + ids[-127:])

    headlines = embed([p["headline"] for p in [*test, *(p for s in samples.values() for p in s)]])

    def top_sentences(pairs: list[dict]) -> tuple[dict, np.ndarray]:
        sentences = {p["body"]: [s for s in SENTENCE_END.split(p["body"]) if s.strip()] or [p["body"]] for p in pairs}
        vectors = embed([s for group in sentences.values() for s in group], 128)
        out, best = {}, []
        for p in pairs:
            matrix = np.stack([vectors[s] for s in sentences[p["body"]]])
            cosines = matrix @ headlines[p["headline"]]
            top = np.argsort(-cosines)[:3]
            mean = matrix[top].mean(axis=0)
            out[(p["headline"], p["body"])] = mean / max(np.linalg.norm(mean), 1e-12)
            best.append(float(cosines[top[0]]))
        return out, np.array(best)[:, None]

    def head_and_tail(bodies: list[str]) -> dict[str, np.ndarray]:
        cut = {body: head_tail(body) for body in bodies}
        vectors = embed(list(cut.values()))
        return {body: vectors[text] for body, text in cut.items()}

    ways = {
        "head-128": lambda bodies: embed(bodies, 128),
        "head-256": lambda bodies: embed(bodies, 256),
        "head-512": lambda bodies: embed(bodies, 512),
        "head+tail-256": head_and_tail,
    }

    def features(pairs: list[dict], way: str) -> tuple[np.ndarray, float]:
        started = time.perf_counter()
        heads = np.stack([headlines[p["headline"]] for p in pairs])
        if way == "top-3 sentences":
            chosen, best = top_sentences(pairs)
            bodies = np.stack([chosen[(p["headline"], p["body"])] for p in pairs])
            x = np.hstack([embedding_pair(heads, bodies), SIMILARITY_SCALE * best])
        else:
            distinct = list(dict.fromkeys(p["body"] for p in pairs))
            vectors = ways[way](distinct)
            x = embedding_pair(heads, np.stack([vectors[p["body"]] for p in pairs]))
        return x, time.perf_counter() - started

    print(f"{args.train_pairs} training pairs x seeds {list(samples)}, {len(test)} held-out pairs (other bodies)")
    print(f"{'way':<16} {'macro-F1':>14} " + " ".join(f"{label:>9}" for label in LABELS) + f" {'embed s':>8}")
    for way in [*ways, "top-3 sentences"]:
        x_test, _ = features(test, way)
        scores, per_class, seconds = [], [], []
        for pairs in samples.values():
            x_train, spent = features(pairs, way)
            model = LogisticRegression(C=C_EMBEDDING, class_weight="balanced", max_iter=2000)
            model.fit(x_train, [p["stance"] for p in pairs])
            predicted = model.predict(x_test)
            gold = [p["stance"] for p in test]
            scores.append(f1_score(gold, predicted, labels=list(LABELS), average="macro"))
            per_class.append(f1_score(gold, predicted, labels=list(LABELS), average=None))
            seconds.append(spent)
        cells = " ".join(f"{100 * v:9.1f}" for v in np.mean(per_class, axis=0))
        print(f"{way:<16} {100 * np.mean(scores):6.1f} +- {100 * np.std(scores):4.1f} {cells} {np.mean(seconds):8.1f}")


if __name__ == "__main__":
    main()
