"""Cold-start pre-annotations before any label exists: cue evidence, target mentions and abstention, for any schema.

Used before any model has been trained. Its rule: be right more often than wrong, and abstain otherwise.

- Single choice. A label is answered only on evidence: a cue phrase of that label in the text (inflected forms
  count; "not", "never", ... just before a cue cancels it). For a dimension bound to a target (stance), a text that
  does not mention the target gets the abstain label, and only cues next to a mention of that target count
  ("condemned the US" is about the US, not about Russia in the same sentence). Mentions are the target's
  `mentions` in the schema, else the names in its title ("the Acme–Globex merger": Acme, Globex), else embedding
  similarity to its name and description. No clear winner: the abstain label ("none", "not_applicable", ... when
  the schema has one) with a low score; a dimension without one answers from embedding similarity to the label
  definitions only when that is clear, else stays unanswered. Similarity alone never overrules the abstain label:
  in a topical corpus every paragraph resembles every definition a little, and the nearest definition was wrong
  more often than right (stance accuracy 0.22-0.44 on the sample dev set, against 0.58-0.95 for "none").
- Paired single choice (schema `pair_with`: a body and its headline or claim). Texts whose embeddings are far apart
  (cosine below PAIR_RELEVANCE_FLOOR) get the dimension's `unrelated_label`; nearer ones are answered as above,
  never with that label.
- Multi choice. A label is ticked on a cue match, or when its definition is the text's nearest and stands out.
- Spans. Whole-word cue matches, scored as hints.

Scores are modest on purpose (never above MAX_SCORE, and below the share of right answers measured on the dev set):
a guess must not look like a trained model's confident answer, and low task scores make Label Studio put these
tasks first when annotators sort by uncertainty. bench/cold_start_eval.py measures all of this.
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from annotation_config.regions import Prediction
from annotation_config.schema import Dimension, Schema, Target

MAX_SCORE = 0.85  # no cold-start figure goes above this

# Label values that mean "the text takes no side / the question does not apply": the safe answer when in doubt.
ABSTAIN_VALUES = frozenset(
    {"none", "neutral", "not_applicable", "notapplicable", "n_a", "na", "no_stance", "nostance", "unrelated",
     "irrelevant", "not_relevant", "no_position", "unclear", "cannot_tell", "discuss", "discusses"}
)  # fmt: skip

# Single choice scores: rough, deliberately low probabilities of being right. On the sample dev set (108 paragraphs)
# the answers they go with were right 95% (not concerned), 55-75% (abstained) and ~85% (on evidence) of the time.
NOT_CONCERNED_SCORE = 0.65  # the text never mentions the target: "none" toward it is the usual truth
ABSTAIN_SCORE = 0.4  # the text concerns the question but shows no clear side: abstain label, low score
EVIDENCE_SCORE = 0.6  # one cue more for the winner than for the runner-up
EVIDENCE_SCORE_STEP = 0.05  # each further cue of margin
EVIDENCE_SCORE_MAX = 0.75
# target-bound dimensions without `mentions`: cosine to the target's name/description below which the text is taken
# not to concern it (MiniLM: unrelated news ~0.0-0.2, a paragraph about the target ~0.4+)
RELEVANCE_FLOOR = 0.30
# paired dimensions: cosine of the text to its paired field below which the two are taken to be unrelated. On 3,000
# FNC-1 training pairs (bench/train_fnc1.py --cold-start-floors; unrelated pairs average 0.12, related 0.64) 0.40 told
# them apart best: 97.3% right (0.30: 93.6%, 0.50: 96.2%)
PAIR_RELEVANCE_FLOOR = 0.40
# a cue attaches to the nearest mention of a target after it ("condemned the US") within this many characters,
# else to the nearest one before it ("US provocations"); farther away it says nothing about any target
ATTACH_AFTER = 30
ATTACH_BEFORE = 15
# "provocations against Russia", "pressure on Moscow": the mention after such a word is on the receiving end of the
# cue, not what the cue judges (the judged one is then the mention before: "US provocations against ...")
RECIPIENT_MARKERS = frozenset({"against", "on", "upon", "at", "toward", "towards"})
NAME_STOPWORDS = frozenset({"the", "a", "an", "of", "and", "for", "on", "in", "to"})  # capitalised, yet no name
NEGATION_WINDOW = 3  # words before a cue searched for a negation
NEGATION_CHARS = 60  # ... within this many characters (bounds the work on long unpunctuated texts)
NEGATIONS = frozenset({"not", "no", "never", "without", "nor", "neither", "cannot", "hardly", "nothing"})

# dimensions without an abstain label: embedding similarity answers when its two best labels differ this much
SINGLE_MARGIN = 0.05
SINGLE_TEMPERATURE = 0.07  # softmax temperature over cosine similarities
SINGLE_SHRINK = 0.25  # weight of the uniform distribution mixed into that softmax

# multi choice: a label is on when a cue matches, or when its similarity clears an absolute floor AND stands out
# from the text's typical label (median over the dimension's labels), so long texts do not tick everything
MULTI_CUE_P = 0.65
MULTI_FLOOR = 0.30
MULTI_MARGIN = 0.10  # over the median; only with MULTI_MIN_LABELS_FOR_MEDIAN labels or more (a median of 2 is noise)
MULTI_MIN_LABELS_FOR_MEDIAN = 3
MULTI_TEMPERATURE = 0.05
MULTI_SHRINK = 0.30  # p is squeezed into [0.15, 0.85]

# spans: a cue match is a hint, not a finding; longer (more specific) cues earn a little more
SPAN_SCORE = 0.35
SPAN_SCORE_PER_EXTRA_WORD = 0.05
SPAN_SCORE_MAX = 0.5

# English inflections a cue word may carry ("support" -> "supported", "reckless" -> "recklessness"); longest first
_SUFFIXES = "ations|ation|ments|ment|ness|ions|ion|ing|ers|er|es|ed|ly|s|d"
_SUFFIXES_AFTER_E = "ations|ation|ing|ions|ion"  # the final e dropped: "escalate" -> "escalating"
_WORD = re.compile(r"\w+(?:['’]\w+)?")
_SENTENCE_END = re.compile(r"(?<=[.!?;:])[\"”’)\]]*\s+|\n+")


class Embedder(Protocol):
    """Anything that maps texts to L2-normalised vectors, like backend.cold_start.embedder.SentenceEmbedder."""

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def abstain_label(dim: Dimension) -> str | None:
    """The label a single-choice dimension answers when the text takes no side ("none", "not_applicable"), if any."""
    for label in dim.labels:
        if re.sub(r"[\s\-/]+", "_", label.value.strip().lower()) in ABSTAIN_VALUES:
            return label.value
    return None


@dataclass(frozen=True)
class _DimensionIndex:
    """Where one choice dimension's prototypes sit in the predictor's prototype matrix."""

    rows: np.ndarray  # prototype rows, grouped by label in schema order
    starts: np.ndarray  # [n_labels] offset of each label's first prototype within `rows`
    target_rows: np.ndarray | None  # the target's name and description, for a dimension bound to a target


@dataclass(frozen=True)
class _CuePattern:
    label: str
    pattern: re.Pattern[str]
    check_start: bool  # the cue begins with a word character, so the match must not follow one
    check_end: bool
    score: float


@dataclass(frozen=True)
class _Hit:
    """One cue or mention found in a text."""

    start: int
    end: int
    key: str  # the label (cues) or target id (mentions)
    group: int = 0  # which mention group of the target matched


class ColdStartPredictor:
    """Pre-annotations from cue evidence, target mentions and label definitions, for any schema (a Predictor)."""

    kind = "cold-start"

    def __init__(self, schema: Schema, embedder: Embedder) -> None:
        self.schema = schema
        self.embedder = embedder
        self.model_version = f"cold-start-{schema.hash}"
        # what computes the embeddings (GET /health), e.g. "onnx int8" or "torch fp32 (fallback: ...)"
        describe = getattr(embedder, "describe", None)
        self.runtime_description = describe() if describe is not None else None
        self._choice_dims = schema.of_kind("single", "multi")
        self._span_dims = schema.of_kind("spans")
        self._fields = list(dict.fromkeys(name for dim in schema.dimensions for name in dim.reads))
        self._prototypes, self._index = self._build_prototypes()
        self._cues = {dim.name: _cue_patterns(dim) for dim in self._span_dims}
        # dimensions with the same cues (one per target) share one pattern list, so a text is searched once for them
        shared: dict[tuple, list[tuple[str, re.Pattern[str]]]] = {}
        self._evidence = {
            dim.name: shared.setdefault(tuple((lb.value, tuple(lb.cues)) for lb in dim.labels), _evidence_patterns(dim))
            for dim in self._choice_dims
        }
        # a paired dimension's unrelated label is answered on distance alone, never as the abstain label
        self._abstain = {
            dim.name: abstain_label(_related_labels(dim)) for dim in self._choice_dims if dim.kind == "single"
        }
        targets = {dim.target.id: dim.target for dim in self._choice_dims if dim.target is not None}
        self._mentions = {tid: _mention_patterns(t) for tid, t in targets.items() if _mention_groups(t)}

    def predict(
        self, tasks: Sequence[Mapping[str, Any]], vectors: Mapping[str, np.ndarray] | None = None
    ) -> list[Prediction]:
        """One Prediction per task `data` dict, in order; all texts of the batch go through one embedder call.

        `vectors`: the texts' embeddings, computed already (a trained model's own, training/prior.py); the embedder
        then embeds nothing."""
        rows = [{field: _text_of(task, field) for field in self._fields} for task in tasks]
        choice_fields = {name for dim in self._choice_dims for name in dim.reads}
        wanted = list(dict.fromkeys(t for row in rows for f, t in row.items() if f in choice_fields and t.strip()))
        if vectors is not None:
            vector_of = {text: np.asarray(vectors[text], dtype=np.float32) for text in wanted}
        else:
            embedded = np.asarray(self.embedder.embed(wanted), dtype=np.float32) if wanted else np.zeros((0, 0))
            vector_of = {text: embedded[i] for i, text in enumerate(wanted)}
        # One matrix-vector product per distinct text (not one matrix product per batch): BLAS picks different
        # kernels for different batch sizes, and a task's scores must not depend on which tasks came with it.
        similarity = {text: self._prototypes @ vector for text, vector in vector_of.items()}
        return [self._predict_one(row, similarity, vector_of) for row in rows]

    def _predict_one(
        self, row: dict[str, str], similarity: dict[str, np.ndarray], vector_of: dict[str, np.ndarray]
    ) -> Prediction:
        labels: dict[str, Any] = {}
        scores: dict[str, float] = {}
        readings = {field: _Reading(text, self._mentions) for field, text in row.items()}
        for dim in self._choice_dims:
            text = row[dim.field]
            sims = similarity.get(text)
            if sims is None:  # no text: no evidence, so no answer and chance-level confidence
                value, confidence = (None, 1.0 / len(dim.labels)) if dim.kind == "single" else ([], 0.5)
            else:
                index = self._index[dim.name]
                per_label = _label_similarities(sims, index)
                reading = readings[dim.field]
                if dim.kind == "single" and dim.pair_with:
                    paired = vector_of.get(row[dim.pair_with])
                    cosine = None if paired is None else float(vector_of[text] @ paired)
                    value, confidence = self._paired_single(dim, cosine, reading, per_label, sims, index)
                elif dim.kind == "single":
                    value, confidence = self._single(dim, reading, per_label, sims, index)
                else:
                    value, confidence = _multi(dim, per_label, reading.evidence(self._evidence[dim.name]))
            if value is not None:
                labels[dim.name] = value
            scores[dim.name] = _cap(confidence)
        span_scores: list[float] = []
        for dim in self._span_dims:
            spans = _match_cues(row[dim.field], self._cues[dim.name])
            labels[dim.name] = spans
            span_scores.extend(s["score"] for s in spans)
        overall = list(scores.values()) or span_scores  # a spans-only schema falls back to its spans
        score = _cap(float(np.mean(overall))) if overall else 0.0
        return Prediction(labels=labels, scores=scores, score=score)

    def _paired_single(
        self,
        dim: Dimension,
        cosine: float | None,
        reading: _Reading,
        per_label: np.ndarray,
        sims: np.ndarray,
        index: _DimensionIndex,
    ) -> tuple[str | None, float]:
        """Far from its paired text: the unrelated label; else answered on evidence, never as unrelated."""
        unrelated = dim.unrelated_label
        if unrelated is None:
            return self._single(dim, reading, per_label, sims, index)
        if cosine is not None and cosine < PAIR_RELEVANCE_FLOOR:
            return unrelated, NOT_CONCERNED_SCORE
        without = _related_labels(dim)
        keep = np.array([label.value != unrelated for label in dim.labels])
        if len(without.labels) < 2:
            return without.labels[0].value, ABSTAIN_SCORE
        return self._single(without, reading, per_label[keep], sims, index)

    def _single(
        self, dim: Dimension, reading: _Reading, per_label: np.ndarray, sims: np.ndarray, index: _DimensionIndex
    ) -> tuple[str | None, float]:
        """Answer on cue evidence, abstain without it; see the module docstring."""
        none = self._abstain[dim.name]
        target = dim.target
        if target is not None:
            if target.id in self._mentions:
                concerned = reading.concerns(target.id)
            else:
                concerned = index.target_rows is not None and float(sims[index.target_rows].max()) >= RELEVANCE_FLOOR
            if not concerned:
                return (none, NOT_CONCERNED_SCORE) if none is not None else (None, 1.0 / len(dim.labels))
        hits = reading.evidence(self._evidence[dim.name])
        if target is not None and target.id in self._mentions:
            hits = [hit for hit in hits if target.id in reading.attached_targets(hit)]
        # the abstain label's cues ("said", "reported") are no evidence of a side, and a position counts once
        counts = {label.value: 0 for label in dim.labels if label.value != none}
        for value, _ in {(hit.key, hit.start) for hit in hits if hit.key != none and hit.key in counts}:
            counts[value] += 1
        ranked = sorted(counts.values(), reverse=True) + [0, 0]
        margin = ranked[0] - ranked[1]
        if margin >= 1:
            best = max(counts, key=lambda value: counts[value])
            return best, min(EVIDENCE_SCORE_MAX, EVIDENCE_SCORE + EVIDENCE_SCORE_STEP * (margin - 1))
        if none is not None:
            return none, max(ABSTAIN_SCORE, 1.0 / len(dim.labels))  # low, yet never below chance
        return _single_by_similarity(dim, per_label)

    def _build_prototypes(self) -> tuple[np.ndarray, dict[str, _DimensionIndex]]:
        """Embed every prototype text once (one embedder call) and index each dimension's rows."""
        groups = {dim.name: [dim.prototype_texts(label) for label in dim.labels] for dim in self._choice_dims}
        targets = {dim.name: _target_texts(dim) for dim in self._choice_dims if dim.kind == "single" and dim.target}
        texts = [text for dim_groups in groups.values() for group in dim_groups for text in group]
        texts = list(dict.fromkeys([*texts, *(text for target in targets.values() for text in target)]))
        if not texts:
            return np.zeros((0, 0), dtype=np.float32), {}
        matrix = np.ascontiguousarray(self.embedder.embed(texts), dtype=np.float32)
        row_of = {text: i for i, text in enumerate(texts)}
        index = {}
        for dim in self._choice_dims:
            dim_groups = groups[dim.name]
            target = targets.get(dim.name)
            index[dim.name] = _DimensionIndex(
                rows=np.array([row_of[text] for group in dim_groups for text in group]),
                starts=np.cumsum([0, *(len(group) for group in dim_groups[:-1])]),
                target_rows=np.array([row_of[text] for text in target]) if target else None,
            )
        return matrix, index


class _Reading:
    """One text's sentences and target mentions, computed once and shared by every dimension on that text."""

    def __init__(self, text: str, mentions: dict[str, list[re.Pattern[str]]]) -> None:
        self.text = text
        self._sentence_starts = [0, *(m.end() for m in _SENTENCE_END.finditer(text))]
        found_mentions = [
            _Hit(m.start(), m.end(), tid, g)
            for tid, groups in mentions.items()
            for g, pattern in enumerate(groups)
            for m in pattern.finditer(text)
        ]
        # by start, so that the mentions around a cue are found by bisection
        self.mentions = sorted(found_mentions, key=lambda hit: (hit.start, hit.end))
        self._mention_starts = [hit.start for hit in self.mentions]
        self._longest_mention = max((hit.end - hit.start for hit in self.mentions), default=0)
        found = {(hit.key, hit.group) for hit in self.mentions}
        self.concerned = {tid for tid, groups in mentions.items() if all((tid, g) in found for g in range(len(groups)))}
        self._cache: dict[int, list[_Hit]] = {}

    def concerns(self, target_id: str) -> bool:
        """Whether the text mentions the target: a word of every one of its mention groups."""
        return target_id in self.concerned

    def sentence(self, position: int) -> int:
        """Index of the sentence holding this character."""
        return bisect.bisect_right(self._sentence_starts, position) - 1

    def evidence(self, patterns: list[tuple[str, re.Pattern[str]]]) -> list[_Hit]:
        """Cue matches of a dimension's labels, leaving out negated ones ("did not support")."""
        key = id(patterns)
        if key not in self._cache:
            hits = [_Hit(m.start(), m.end(), label) for label, pattern in patterns for m in pattern.finditer(self.text)]
            self._cache[key] = [hit for hit in hits if not self._negated(hit.start)]
        return self._cache[key]

    def attached_targets(self, hit: _Hit) -> set[str]:
        """The targets of the mention the cue qualifies, in its sentence: the first one within ATTACH_AFTER characters
        after it (the object of "condemned the US") unless a RECIPIENT_MARKER comes between, else the last one within
        ATTACH_BEFORE before it ("US provocations"). The cue says nothing about farther mentions."""
        sentence = self.sentence(hit.start)
        lo = bisect.bisect_left(self._mention_starts, hit.start - ATTACH_BEFORE - self._longest_mention)
        hi = bisect.bisect_right(self._mention_starts, hit.end + ATTACH_AFTER)
        near = [
            m
            for m in self.mentions[lo:hi]
            if m.key in self.concerned
            and (m.end <= hit.start or m.start >= hit.end)
            and self.sentence(m.start) == sentence
        ]
        after = [
            m
            for m in near
            if m.start >= hit.end
            and m.start - hit.end <= ATTACH_AFTER
            and not RECIPIENT_MARKERS.intersection(w.lower() for w in _WORD.findall(self.text[hit.end : m.start]))
        ]
        if after:
            first = min(m.start for m in after)
            return {m.key for m in after if m.start == first}
        before = [m for m in near if m.end <= hit.start and hit.start - m.end <= ATTACH_BEFORE]
        last = max((m.end for m in before), default=None)
        return {m.key for m in before if m.end == last}

    def _negated(self, start: int) -> bool:
        """Whether one of the few words before this position negates it ("did not support", "never welcomed")."""
        sentence_start = max(self._sentence_starts[self.sentence(start)], start - NEGATION_CHARS)
        words = _WORD.findall(self.text[sentence_start:start])[-NEGATION_WINDOW:]
        return any(w.lower() in NEGATIONS or w.lower().endswith(("n't", "n’t")) for w in words)


def _related_labels(dim: Dimension) -> Dimension:
    """The dimension without its unrelated label (itself when it has none)."""
    if dim.unrelated_label is None:
        return dim
    return dim.model_copy(update={"labels": [label for label in dim.labels if label.value != dim.unrelated_label]})


def _target_texts(dim: Dimension) -> list[str]:
    """What the paragraph is compared with to tell whether it concerns the dimension's target at all."""
    assert dim.target is not None
    return list(dict.fromkeys(t.strip() for t in (dim.target.name, dim.target.description) if t.strip()))


def _label_similarities(sims: np.ndarray, index: _DimensionIndex) -> np.ndarray:
    """[n_labels]: each label's score is the max cosine over its prototypes.

    Max, not mean: the definition and the cues are alternative ways a label shows up; a paragraph needs to match
    one of them, not all (a paragraph about sanctions should not be penalised for not mentioning investment).
    """
    return np.maximum.reduceat(sims[index.rows], index.starts).astype(np.float64)


def _single_by_similarity(dim: Dimension, sims: np.ndarray) -> tuple[str | None, float]:
    """The nearest label's answer when it stands clear of the runner-up (no abstain label to fall back on)."""
    k = len(dim.labels)
    top = np.sort(sims)[::-1]
    if top[0] - top[1] < SINGLE_MARGIN:
        return None, 1.0 / k
    logits = sims / SINGLE_TEMPERATURE
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    probs = (1.0 - SINGLE_SHRINK) * probs + SINGLE_SHRINK / k  # keeps the ranking, only lowers the confidence
    best = int(np.argmax(probs))
    return dim.labels[best].value, float(probs[best])


def _multi(dim: Dimension, sims: np.ndarray, hits: list[_Hit]) -> tuple[list[str], float]:
    """Cued labels, plus the single nearest label by definition when it stands out; each with a yes/no score."""
    threshold = np.full_like(sims, MULTI_FLOOR)
    if len(sims) >= MULTI_MIN_LABELS_FOR_MEDIAN:
        threshold = np.maximum(threshold, np.median(sims) + MULTI_MARGIN)
    p = 1.0 / (1.0 + np.exp(-(sims - threshold) / MULTI_TEMPERATURE))
    p = 0.5 + (1.0 - MULTI_SHRINK) * (p - 0.5)
    # Similarity speaks for the nearest label only: every definition of a topical schema resembles a long paragraph
    # somewhat, and ticking all that clear the bar tripled the frames ticked without adding right ones.
    nearest = int(np.argmax(sims))
    p = np.where(np.arange(len(p)) == nearest, p, np.minimum(p, 0.5 - 1e-6))
    cued = {hit.key for hit in hits}
    p = np.array([max(p_label, MULTI_CUE_P) if label.value in cued else p_label for label, p_label in zip(
        dim.labels, p, strict=True)])  # fmt: skip
    chosen = [label.value for label, p_label in zip(dim.labels, p, strict=True) if p_label >= 0.5]
    # the set is only as right as its least certain yes/no decision
    confidence = float(np.min(np.maximum(p, 1.0 - p)))
    return chosen, confidence


def _word_pattern(word: str, inflect: bool) -> str:
    """Regex for one cue word; with `inflect`, its common English inflections too."""
    if not inflect or not word[-1:].isalpha() or len(word) < 3:
        return re.escape(word)
    if word.endswith("e"):
        return f"{re.escape(word[:-1])}(?:e(?:{_SUFFIXES})?|{_SUFFIXES_AFTER_E})"
    return f"{re.escape(word)}(?:{_SUFFIXES})?"


def _phrase_source(phrase: str, inflect: bool) -> str:
    """Regex source for one phrase: any whitespace between its words, no word character right after it."""
    words = phrase.split()
    body = r"\s+".join(_word_pattern(w, inflect) for w in words)
    return body + (r"(?!\w)" if is_word_char(words[-1][-1]) else "")


def _alternatives(phrases: Sequence[str], inflect: bool, case_sensitive: Sequence[bool]) -> re.Pattern[str] | None:
    """One pattern matching any of the phrases as whole words (longest first: "strengthen cooperation" before
    "strengthen"). The start-of-word check sits outside the alternation, which makes the search ~4x faster."""
    parts: dict[bool, list[tuple[int, str]]] = {True: [], False: []}
    for phrase, sensitive in zip(phrases, case_sensitive, strict=True):
        if phrase.strip():
            src = _phrase_source(phrase.strip(), inflect)
            parts[is_word_char(phrase.strip()[0])].append((len(phrase), src if sensitive else f"(?i:{src})"))
    sources = []
    for word_start, found in parts.items():
        if found:
            alternation = "|".join(src for _, src in sorted(set(found), reverse=True))
            sources.append(f"(?<!\\w)(?:{alternation})" if word_start else f"(?:{alternation})")
    return re.compile("|".join(sources)) if sources else None


def _evidence_patterns(dim: Dimension) -> list[tuple[str, re.Pattern[str]]]:
    """(label, pattern) per label with cues: any of its cues, inflections included, case-insensitive."""
    out = []
    for label in dim.labels:
        cues = [c.strip() for c in label.cues if c.strip()]
        pattern = _alternatives(cues, inflect=True, case_sensitive=[False] * len(cues))
        if pattern is not None:
            out.append((label.value, pattern))
    return out


def _mention_groups(target: Target) -> list[list[str]]:
    """The target's `mentions`; without them, the names and acronyms in its name ("the Russia–China partnership":
    Russia or China), which is what a text about it most often names."""
    if target.mentions:
        return target.mentions
    names = [w for w in re.split(r"[\s\-–—/]+", target.name) if w[:1].isupper() and w.lower() not in NAME_STOPWORDS]
    return [list(dict.fromkeys(names))] if names else []


def _mention_patterns(target: Target) -> list[re.Pattern[str]]:
    """One pattern per mention group. Words written without lowercase ("US", "NATO") match case-sensitively, so
    the pronoun "us" is not the United States; the others match in any case."""
    groups = []
    for group in _mention_groups(target):
        pattern = _alternatives(group, inflect=False, case_sensitive=[not any(c.islower() for c in w) for w in group])
        if pattern is not None:
            groups.append(pattern)
    return groups


def _cue_patterns(dim: Dimension) -> list[_CuePattern]:
    patterns = []
    for label in dim.labels:
        for cue in dict.fromkeys(c.strip() for c in label.cues):
            words = cue.split()
            if not words:
                continue
            # case-insensitive (Unicode), any run of whitespace between the words of a phrase
            pattern = re.compile(r"\s+".join(re.escape(w) for w in words), re.IGNORECASE)
            score = round(min(SPAN_SCORE_MAX, SPAN_SCORE + SPAN_SCORE_PER_EXTRA_WORD * (len(words) - 1)), 3)
            patterns.append(_CuePattern(label.value, pattern, is_word_char(cue[0]), is_word_char(cue[-1]), score))
    return patterns


def is_word_char(ch: str) -> bool:
    """Letters, digits and combining marks of any script, '_' and the zero-width (non-)joiners of Persian/Indic.

    Stricter than regex \\w, whose boundary falls inside Persian words at a ZWNJ or before an Arabic diacritic.
    """
    return ch == "_" or ch in "\u200c\u200d" or unicodedata.category(ch)[0] in "LNM"


def _match_cues(text: str, cues: list[_CuePattern]) -> list[dict]:
    """Whole-word, case-insensitive cue matches; per label non-overlapping (earliest first, then longest)."""
    if not text or not cues:
        return []
    candidates: dict[str, list[tuple[int, int, float]]] = {}
    for cue in cues:
        for match in cue.pattern.finditer(text):
            start, end = match.span()
            if cue.check_start and start > 0 and is_word_char(text[start - 1]):
                continue
            if cue.check_end and end < len(text) and is_word_char(text[end]):
                continue
            candidates.setdefault(cue.label, []).append((start, end, cue.score))
    spans = non_overlapping_spans(text, candidates)
    spans.sort(key=lambda s: (s["start"], s["end"], s["label"]))
    return spans


def non_overlapping_spans(text: str, candidates: dict[str, list[tuple[int, int, float]]]) -> list[dict]:
    """Per label, the (start, end, score) matches that do not overlap: earliest first, then longest."""
    spans = []
    for label, found in candidates.items():
        taken_until = -1
        for start, end, score in sorted(found, key=lambda c: (c[0], -(c[1] - c[0]))):
            if start >= taken_until:
                spans.append({"start": start, "end": end, "text": text[start:end], "label": label, "score": score})
                taken_until = end
    return spans


def _text_of(task: Mapping[str, Any], field: str | None) -> str:
    """The task's text in `field`, or "" when it is missing or not a string (the backend validates; we cope)."""
    value = task.get(field) if isinstance(task, Mapping) and field else None
    return value if isinstance(value, str) else ""


def _cap(value: float) -> float:
    return float(min(MAX_SCORE, max(0.0, value)))
