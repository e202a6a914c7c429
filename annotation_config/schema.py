"""The label schema: load, validate and query the YAML file that defines data fields, dimensions and labels."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from annotation_config.errors import WorkbenchError, read_user_file

DEFAULT_SCHEMA_PATH = Path(__file__).with_name("schema.yaml")

Kind = Literal["single", "multi", "spans"]
_IDENTIFIER = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
# Task fields Label Studio's templates resolve to something else ($source is the whole task JSON).
RESERVED_FIELDS = {"source", "id", "annotations", "predictions", "meta"}


class SchemaError(WorkbenchError, ValueError):
    """A schema file that cannot be used; the message is one line naming the file, the path and the fix."""


class _Strict(BaseModel):
    # Unknown keys are typos far more often than intent: reject them with their path.
    model_config = ConfigDict(extra="forbid", frozen=False)


def _check_identifier(value: str) -> str:
    if not _IDENTIFIER.match(value):
        raise ValueError(f"{value!r} is not a valid name: use letters, digits and '_', starting with a letter")
    return value


class Label(_Strict):
    """One label of a dimension, with the definition annotators see and cue phrases for cold-start hints."""

    value: str = Field(min_length=1)
    definition: str = Field(min_length=1)
    cues: list[str] = Field(default_factory=list)

    @field_validator("value")
    @classmethod
    def _no_surrounding_space(cls, value: str) -> str:
        if value != value.strip():
            raise ValueError(f"label {value!r} has leading or trailing spaces; remove them")
        return value


class ContextField(_Strict):
    """A task field shown read-only above the labelled text."""

    name: str
    title: str = ""

    _name = field_validator("name")(_check_identifier)


class DataSpec(_Strict):
    """Which task fields exist and what role each plays."""

    text: str = "text"
    key: str = "key"
    group: str | None = None
    context: list[ContextField] = Field(default_factory=list)
    extra: list[str] = Field(default_factory=list)

    _text = field_validator("text", "key")(_check_identifier)

    @model_validator(mode="after")
    def _no_reserved_fields(self) -> DataSpec:
        for name in self.shown_fields:
            if name in RESERVED_FIELDS:
                raise ValueError(
                    f"field {name!r} is reserved by Label Studio (${name} shows something else); rename it"
                )
        return self

    @property
    def shown_fields(self) -> list[str]:
        """Fields rendered in Label Studio (the labelled text first)."""
        return [self.text, *(c.name for c in self.context)]

    @property
    def all_fields(self) -> list[str]:
        """Every field a task carries."""
        fields = [self.key, *self.shown_fields, *self.extra]
        if self.group:
            fields.append(self.group)
        return list(dict.fromkeys(fields))


class Target(_Strict):
    """A stance target; dimensions with `per_target: true` are repeated for each one."""

    id: str
    name: str = Field(min_length=1)
    description: str = ""
    # Words that show a text concerns the target (used by the cold start: no mention, no stance). Groups of
    # alternatives; a text concerns the target when it matches a word of every group. A flat list is one group.
    mentions: list[list[str]] = Field(default_factory=list)

    _id = field_validator("id")(_check_identifier)

    @field_validator("mentions", mode="before")
    @classmethod
    def _mention_groups(cls, value: Any) -> Any:
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            value = [value]  # a flat list of words: one group of alternatives
        if isinstance(value, list):
            value = [[group] if isinstance(group, str) else group for group in value]  # a lone word: a group of one
            for i, group in enumerate(value):
                if not isinstance(group, list) or not group or not all(isinstance(w, str) and w.strip() for w in group):
                    raise ValueError(f"group {i + 1} ({group!r}) must be a non-empty list of non-empty words")
        return value


class Dimension(_Strict):
    """One question annotators answer: a single choice, a multi choice or span labels on a text field."""

    name: str
    kind: Kind
    title: str = ""
    field: str | None = None
    # A second task field read together with `field`, as (pair_with, field): the claim or headline a body's stance
    # is toward, a question for an answer. The per-task counterpart of a schema `target`.
    pair_with: str | None = None
    # With pair_with: the label meaning "the text does not concern the paired field" (FNC-1's "unrelated"); the cold
    # start answers it when the two texts are far apart.
    unrelated_label: str | None = None
    per_target: bool = False
    target: Target | None = None
    required: bool = False
    labels: list[Label] = Field(min_length=1)

    _name = field_validator("name")(_check_identifier)

    @model_validator(mode="after")
    def _labels_are_usable(self) -> Dimension:
        seen: set[str] = set()
        for i, label in enumerate(self.labels):
            if label.value in seen:
                raise ValueError(f"labels[{i}]: duplicate label {label.value!r}; each label needs a unique value")
            seen.add(label.value)
        if self.kind == "single" and len(self.labels) < 2:
            raise ValueError("labels: a single-choice dimension needs at least two labels")
        if self.pair_with is not None and (self.per_target or self.target is not None):
            raise ValueError("pair_with: a dimension reads schema targets (per_target) or a task field, not both")
        if self.pair_with is not None and self.kind == "spans":
            raise ValueError("pair_with: span dimensions mark the text alone; use it on single or multi choice")
        if self.unrelated_label is not None:
            if self.pair_with is None:
                raise ValueError("unrelated_label: only for a dimension with pair_with")
            if self.unrelated_label not in seen or self.kind != "single":
                raise ValueError(
                    f"unrelated_label: {self.unrelated_label!r} must be one of this single-choice dimension's labels"
                )
        return self

    @property
    def reads(self) -> tuple[str, ...]:
        """The task fields the model reads for this dimension: the paired field first, as it is encoded. (`field` is
        set once the schema is validated: the text field unless the dimension names another.)"""
        field = self.field or ""
        return (self.pair_with, field) if self.pair_with else (field,)

    @property
    def values(self) -> list[str]:
        """Label values in schema order."""
        return [label.value for label in self.labels]

    def label(self, value: str) -> Label:
        """The label with this value (KeyError if unknown)."""
        for label in self.labels:
            if label.value == value:
                return label
        raise KeyError(value)

    def prototype_texts(self, label: Label) -> list[str]:
        """How a label is described in words: its definition (per-target ones already name their target) and each
        cue, tied to the target if any. The cold start compares paragraphs with these, and trained models use the
        similarities as features (training/embedding_heads.py).

        A bare stance cue ("condemn") is the same for every target; "condemn NATO enlargement" is not.
        """
        cues = [cue.strip() for cue in label.cues if cue.strip()]
        if self.target is not None:
            cues = [f"{cue} {self.target.name}" for cue in cues]
        return list(dict.fromkeys([label.definition.strip(), *cues]))


class Schema(_Strict):
    """A validated schema; `dimensions` holds every dimension after per-target expansion."""

    name: str = Field(min_length=1)
    description: str = ""
    language: str = "en"
    license: str = "other"
    instructions: str = ""
    data: DataSpec = Field(default_factory=DataSpec)
    targets: list[Target] = Field(default_factory=list)
    dimensions: list[Dimension] = Field(min_length=1)

    @model_validator(mode="after")
    def _expand_and_check(self) -> Schema:
        target_ids = [t.id for t in self.targets]
        for i, tid in enumerate(target_ids):
            if tid in target_ids[:i]:
                raise ValueError(f"targets[{i}].id: duplicate target {tid!r}")
        expanded: list[Dimension] = []
        for i, dim in enumerate(self.dimensions):
            if dim.per_target:
                if not self.targets:
                    raise ValueError(f"dimensions[{i}].per_target: no targets are defined; add a 'targets' list")
                expanded.extend(_for_target(dim, target) for target in self.targets)
            else:
                expanded.append(dim)
        shown = self.data.shown_fields
        names: set[str] = set(self.data.all_fields)
        for i, dim in enumerate(expanded):
            dim.field = dim.field or self.data.text
            if dim.field not in shown:
                raise ValueError(
                    f"dimensions[{i}] ({dim.name}).field: {dim.field!r} is not a text or context field; "
                    f"use one of {shown}"
                )
            if dim.pair_with is not None and (dim.pair_with not in shown or dim.pair_with == dim.field):
                raise ValueError(
                    f"dimensions[{i}] ({dim.name}).pair_with: {dim.pair_with!r} must be another text or context "
                    f"field than {dim.field!r}, so annotators see it; use one of {[f for f in shown if f != dim.field]}"
                )
            if dim.name in names:
                raise ValueError(
                    f"dimensions[{i}].name: {dim.name!r} is used twice (dimension or data field); rename it"
                )
            names.add(dim.name)
        self.dimensions = expanded
        return self

    def dimension(self, name: str) -> Dimension:
        """The dimension with this name (KeyError if unknown)."""
        for dim in self.dimensions:
            if dim.name == name:
                return dim
        raise KeyError(name)

    def of_kind(self, *kinds: Kind) -> list[Dimension]:
        """Dimensions of the given kinds, in schema order."""
        return [d for d in self.dimensions if d.kind in kinds]

    @property
    def hash(self) -> str:
        """A short content hash: changes whenever anything that shapes labels or predictions changes."""
        canonical = self.model_dump_json(exclude={"description", "license", "language"})
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def _for_target(dim: Dimension, target: Target) -> Dimension:
    """A copy of a per-target dimension bound to one target, with {target} filled in."""

    def fill(text: str) -> str:
        return text.replace("{target}", target.name)

    labels = [label.model_copy(update={"definition": fill(label.definition)}) for label in dim.labels]
    return dim.model_copy(
        update={
            "name": f"{dim.name}_{target.id}",
            "title": fill(dim.title) if dim.title else f"{dim.name} toward {target.name}",
            "per_target": False,
            "target": target,
            "labels": labels,
        }
    )


def _format_location(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _one_line(error: ValidationError) -> str:
    first = error.errors()[0]
    message = first["msg"].removeprefix("Value error, ")
    where = _format_location(tuple(first["loc"]))
    if first["type"] in {"literal_error", "missing", "extra_forbidden", "string_type", "list_type", "bool_parsing"}:
        shown = first.get("input")
        if first["type"] != "missing" and not isinstance(shown, dict | list):
            message += f" (got {shown!r})"
    more = len(error.errors()) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    if where and re.match(r"^[A-Za-z_][\w\[\]]*: ", message):  # a validator's own sub-path continues the location
        return f"{where}.{message}{suffix}"
    return f"{where}: {message}{suffix}" if where else f"{message}{suffix}"


def parse_schema(raw: Any, source: str = "<schema>") -> Schema:
    """Validate an already-parsed YAML document; raise SchemaError with a one-line message."""
    if not isinstance(raw, dict):
        raise SchemaError(f"{source}: the top level must be a mapping with 'name', 'data' and 'dimensions'")
    try:
        return Schema.model_validate(raw)
    except ValidationError as error:
        raise SchemaError(f"{source}: {_one_line(error)}") from None


def load_schema(path: str | Path | None = None) -> Schema:
    """Load and validate a schema file (the sample schema when no path is given)."""
    path = Path(path) if path else DEFAULT_SCHEMA_PATH
    text = read_user_file(path, SchemaError, "no such schema file; pass an existing file with --schema PATH", "schema")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise SchemaError(f"{path}: {where}invalid YAML ({problem}); fix the syntax") from None
    return parse_schema(raw, str(path))
