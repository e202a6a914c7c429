"""One encoder, many heads: a transformers model with a head per schema dimension, saved with save_pretrained.

Heads: a softmax head per single-choice dimension, a sigmoid head per multi-choice dimension, and a token head per
span dimension that predicts BIO tags *per span label* (L labels x {O, B, I}, a softmax over three per label).
One BIO tag set over all labels cannot hold overlapping spans of different labels (an actor inside a threat claim
is common); independent per-token sigmoids cannot separate two adjacent spans of one label. Per-label BIO does both.

Stance heads see their target. The encoder runs once per *view*: a view is a (text field, target) pair. All
untargeted dimensions on a field share the plain pass (field text alone); dimensions bound to a target share the
pair pass (target name, field text). The sample schema therefore costs 1 + 3 passes (three targets) per text
instead of 1 + one per dimension. The trade-off: forward cost grows with the number of targets, in exchange for one
set of stance heads that read the target (the alternative, one pass with per-target heads, is cheaper but cannot
share knowledge across targets nor take a new target without new data). In training, a pair pass only runs on the
rows that carry a label for one of its dimensions, so sparsely labelled targets cost little. A dimension paired with
a second task field (schema `pair_with`: a per-task claim or headline) has a pass of its own: (that field's text,
the dimension's text).

Target encoding "late" (opt-in, `--target-encoding late`) is that cheaper alternative: every dimension of a field
reads the one plain pass, and a targeted single/multi-choice head reads [mean of the tokens; the tokens attended
with its own query vector], the query starting at the encoder's embedding of the target's name. One pass per text
whatever the number of targets (the sample schema: 1 instead of 4), at the cost of the target never meeting the
text inside the encoder.

Labels for the loss, per dimension (missing labels are masked, never negatives):
  single: LongTensor [B], -100 when missing
  multi:  FloatTensor [B, L] of 0/1, rows of -1 when missing
  spans:  LongTensor [B, T, L] of 0 (O) / 1 (B) / 2 (I), -100 on special tokens, padding and missing rows
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from annotation_config.schema import Schema
from training.encoder import DEFAULT_ENCODER, resolve_encoder_path
from training.training_args import TARGET_ENCODINGS

IGNORE = -100
BIO = ("O", "B", "I")


def attends_to_target(dim: Mapping[str, Any]) -> bool:
    """Whether a dimension is targeted but reads the plain pass ("late" target encoding, single or multi choice)."""
    return bool(dim.get("target")) and not view_of(dim).target and dim["kind"] != "spans"


class MultiHeadConfig(PretrainedConfig):
    """Config of a MultiHeadModel: the dimensions (name, kind, labels, field, target), the encoder and its config."""

    model_type = "stance_workbench_multihead"

    def __init__(
        self,
        dimensions: list[dict[str, Any]] | None = None,
        encoder_name: str = DEFAULT_ENCODER,
        encoder_config: dict[str, Any] | None = None,
        text_field: str = "text",
        classifier_dropout: float = 0.1,
        class_weights: dict[str, list[float]] | None = None,
        max_seq_length: int = 160,
        schema_name: str = "",
        schema_hash: str = "",
        initializer_range: float = 0.02,
        target_encoding: str = "pair",
        **kwargs: Any,
    ) -> None:
        self.dimensions = list(dimensions or [])
        self.encoder_name = encoder_name
        self.encoder_config = dict(encoder_config or {})
        self.text_field = text_field
        self.classifier_dropout = classifier_dropout
        self.class_weights = dict(class_weights or {})
        self.max_seq_length = max_seq_length  # not "max_length": transformers reserves that for generation
        self.schema_name = schema_name
        self.schema_hash = schema_hash
        self.initializer_range = initializer_range
        self.target_encoding = target_encoding  # "pair" or "late" (see the module docstring)
        super().__init__(**kwargs)

    @classmethod
    def from_schema(
        cls, schema: Schema, encoder: str | None = None, target_encoding: str = "pair", **kwargs: Any
    ) -> MultiHeadConfig:
        """A config for this schema, with the encoder's own config embedded (no download needed to rebuild it)."""
        if target_encoding not in TARGET_ENCODINGS:
            raise ValueError(f"target encoding must be one of {', '.join(TARGET_ENCODINGS)} (got {target_encoding!r})")
        encoder_config = AutoConfig.from_pretrained(resolve_encoder_path(encoder)).to_dict()
        dimensions = [
            {
                "name": d.name,
                "kind": d.kind,
                "labels": d.values,
                "field": d.field or schema.data.text,
                "target": {"id": d.target.id, "name": d.target.name} if d.target else None,
                "pair_with": d.pair_with,  # a task field read first, as the pair's first sequence
                # late: a targeted dimension reads the plain text pass and attends to it with its own query
                "paired": bool(d.target) and target_encoding == "pair",
            }
            for d in schema.dimensions
        ]
        return cls(
            dimensions=dimensions,
            target_encoding=target_encoding,
            encoder_name=str(encoder or DEFAULT_ENCODER),
            encoder_config=encoder_config,
            text_field=schema.data.text,
            schema_name=schema.name,
            schema_hash=schema.hash,
            **kwargs,
        )

    def dimension(self, name: str) -> dict[str, Any]:
        """The stored description of one dimension (KeyError if unknown)."""
        for dim in self.dimensions:
            if dim["name"] == name:
                return dim
        raise KeyError(name)

    @property
    def views(self) -> list[View]:
        """The distinct encoder passes, in dimension order."""
        seen: dict[str, View] = {}
        for dim in self.dimensions:
            view = view_of(dim)
            seen.setdefault(view.id, view)
        return list(seen.values())

    def label_maps(self) -> dict[str, dict[str, Any]]:
        """Per dimension: kind, id2label (index -> label) and, for spans, the BIO tags."""
        maps = {}
        for dim in self.dimensions:
            entry = {"kind": dim["kind"], "id2label": dict(enumerate(dim["labels"])), "view": view_of(dim).id}
            if dim["kind"] == "spans":
                entry["tags"] = list(BIO)
            if dim.get("target"):
                entry["target"] = dim["target"]
            maps[dim["name"]] = entry
        return maps


@dataclass(frozen=True)
class View:
    """One encoder pass: a text field, alone, paired with a target name, or paired with another task field."""

    id: str
    field: str
    target: str | None = None
    pair_field: str | None = None  # the task field read first (a per-task claim or headline)

    @property
    def text_segment(self) -> int:
        """Which sequence of the tokenized input holds the field text (1 after a target or paired field, else 0)."""
        return 1 if self.target is not None or self.pair_field is not None else 0


def view_of(dim: Mapping[str, Any]) -> View:
    """The view a dimension reads."""
    target = dim.get("target")
    if dim.get("pair_with"):
        return View(f"{dim['pair_with']}>{dim['field']}", dim["field"], pair_field=dim["pair_with"])
    if target and dim.get("paired", True):  # models saved before "late" existed have no "paired": pair
        return View(f"{dim['field']}|{target['id']}", dim["field"], target["name"])
    return View(dim["field"], dim["field"])


@dataclass
class MultiHeadOutput(ModelOutput):
    """The summed masked loss (when labels are given) and logits per dimension."""

    loss: torch.Tensor | None = None
    logits: dict[str, torch.Tensor] | None = None


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and progress bars (restored afterwards)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def attention_kernels(device: torch.device | str) -> AbstractContextManager[None]:
    """Where scaled-dot-product attention may run: on CUDA every backend but cuDNN's, elsewhere no constraint.

    torch prefers cuDNN attention on Hopper GPUs, and cuDNN builds an execution graph for every new input shape
    (reported at 0.26-0.4 s each). Our shapes change with nearly every batch (each view runs on the rows labelled
    for it, each batch is padded to its own longest text): on the H100, SDPA averaged 9 ms a call. Flash and
    memory-efficient attention need no per-shape setup. (Not yet measured on a GPU here.)
    """
    if torch.device(device).type != "cuda":
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def _build_encoder(config: PretrainedConfig | None = None, path: str | None = None) -> nn.Module:
    """The bare encoder (no pooler where the architecture allows it), from a config or pretrained weights."""
    with quiet_transformers():
        for kwargs in ({"add_pooling_layer": False}, {}):
            try:
                if path is not None:  # float32 weights whatever the checkpoint's dtype: training needs them
                    return AutoModel.from_pretrained(path, dtype=torch.float32, **kwargs)
                return AutoModel.from_config(config, **kwargs)
            except TypeError:
                continue
    raise RuntimeError("unreachable")


class MultiHeadModel(PreTrainedModel):
    """An encoder with a head per dimension; `forward(views, labels)` returns a MultiHeadOutput."""

    config_class = MultiHeadConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    accepts_loss_kwargs = False

    def __init__(self, config: MultiHeadConfig) -> None:
        super().__init__(config)
        encoder_config = dict(config.encoder_config)
        encoder_type = encoder_config.pop("model_type")
        self.encoder = _build_encoder(AutoConfig.for_model(encoder_type, **encoder_config))
        hidden = self.encoder.config.hidden_size
        self.dropout = nn.Dropout(config.classifier_dropout)
        heads = {}
        queries = {}
        for dim in config.dimensions:
            width = len(dim["labels"]) * (len(BIO) if dim["kind"] == "spans" else 1)
            if attends_to_target(dim):  # [text mean; text attended with the target's query]
                heads[dim["name"]] = nn.Linear(2 * hidden, width)
                queries[dim["name"]] = nn.Parameter(torch.zeros(hidden))
            else:
                heads[dim["name"]] = nn.Linear(hidden, width)
        self.heads = nn.ModuleDict(heads)
        self.target_queries = nn.ParameterDict(queries)
        self._views = config.views
        self._by_view = {view.id: [d for d in config.dimensions if view_of(d).id == view.id] for view in self._views}
        self.post_init()

    @classmethod
    def from_encoder(cls, schema: Schema, encoder: str | None = None, **config_kwargs: Any) -> MultiHeadModel:
        """A fresh model for this schema on top of pretrained encoder weights (local path or cached Hub name)."""
        return cls.with_encoder(MultiHeadConfig.from_schema(schema, encoder, **config_kwargs), encoder)

    @classmethod
    def with_encoder(cls, config: MultiHeadConfig, encoder: str | None = None) -> MultiHeadModel:
        """A model for `config` with freshly initialised heads and the pretrained weights of `encoder`."""
        model = cls(config)
        path = resolve_encoder_path(encoder or config.encoder_name)
        model.encoder = _build_encoder(path=path)
        if len(model.target_queries):
            model.init_target_queries(path)
        return model

    @torch.no_grad()
    def init_target_queries(self, encoder_path: str) -> None:
        """Start each late-encoded dimension's query at the encoder's embedding of its target's name, so it first
        attends to the words that resemble the target (zeros would attend to every token alike)."""
        from transformers import AutoTokenizer

        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(encoder_path)
        was_training = self.encoder.training
        self.encoder.eval()
        for name in self.target_queries:
            target = self.config.dimension(name)["target"]["name"]
            inputs = tokenizer([target], return_tensors="pt")
            inputs = {k: v.to(self.target_queries[name].device) for k, v in inputs.items() if k != "token_type_ids"}
            hidden = self.encoder(**inputs).last_hidden_state[0]
            self.target_queries[name].copy_(hidden.mean(0))
        self.encoder.train(was_training)

    def forward(
        self,
        views: Mapping[str, Mapping[str, torch.Tensor]],
        labels: Mapping[str, torch.Tensor] | None = None,
    ) -> MultiHeadOutput:
        """Encode each view once and apply its heads; sum the masked per-dimension losses when labels are given.

        With labels (training and validation loss), a view runs only on rows labelled for one of its dimensions (a
        view with none is skipped and its dimensions have no logits); logits of skipped rows are zeros.
        """
        logits: dict[str, torch.Tensor] = {}
        losses: list[torch.Tensor] = []
        for view in self._views:
            inputs = views.get(view.id)
            dims = self._by_view[view.id]
            if inputs is None:
                continue
            batch = inputs["input_ids"].shape[0]
            rows = None
            if labels is not None:
                rows = _labelled_rows(dims, labels, batch, inputs["input_ids"].device)
                if not rows.any():
                    continue
                rows = rows.nonzero().squeeze(1)
            sub = {k: (v if rows is None else v[rows]) for k, v in inputs.items() if k != "offset_mapping"}
            length = int(sub["attention_mask"].sum(1).max())  # trim padding left by dropped rows
            sub = {k: v[:, :length] for k, v in sub.items()}
            hidden = self.encoder(**sub).last_hidden_state
            mask = sub["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = self.dropout((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0))
            tokens = self.dropout(hidden)
            for dim in dims:
                name, kind = dim["name"], dim["kind"]
                if kind == "spans":
                    out = self.heads[name](tokens).view(hidden.shape[0], length, len(dim["labels"]), len(BIO))
                elif name in self.target_queries:
                    attended = self.dropout(_attend(hidden, sub["attention_mask"], self.target_queries[name]))
                    out = self.heads[name](torch.cat([pooled, attended], dim=-1))
                else:
                    out = self.heads[name](pooled)
                if labels is not None and name in labels:
                    target = labels[name] if rows is None else labels[name][rows]
                    if kind == "spans":
                        target = target[:, :length]
                    loss = self._loss(dim, out, target)
                    if loss is not None:
                        losses.append(loss)
                logits[name] = out if rows is None else _scatter_rows(out, rows, batch)
        loss = torch.stack(losses).sum() if losses else None
        if labels is not None and loss is None:
            loss = sum(p.sum() * 0.0 for p in self.heads.parameters())  # a batch without labels: zero, no NaN
        return MultiHeadOutput(loss=loss, logits=logits)

    def _weights(self, name: str, like: torch.Tensor) -> torch.Tensor | None:
        weights = self.config.class_weights.get(name)
        return None if not weights else torch.tensor(weights, dtype=like.dtype, device=like.device)

    def _loss(self, dim: Mapping[str, Any], logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
        name, kind = dim["name"], dim["kind"]
        if kind == "single":
            if not (target != IGNORE).any():
                return None
            weight = self._weights(name, logits.float())
            return F.cross_entropy(logits.float(), target, weight=weight, ignore_index=IGNORE)
        if kind == "multi":
            present = target[:, 0] >= 0
            if not present.any():
                return None
            return F.binary_cross_entropy_with_logits(
                logits[present].float(), target[present].float(), pos_weight=self._weights(name, logits.float())
            )
        if not (target != IGNORE).any():
            return None
        return F.cross_entropy(
            logits.float().reshape(-1, len(BIO)),
            target.reshape(-1),
            weight=self._weights(name, logits.float()),
            ignore_index=IGNORE,
        )


def freeze_lower_layers(model: MultiHeadModel, count: int) -> int:
    """Freeze the encoder's embeddings and its `count` lowest layers; returns the parameters left trainable.

    Nothing below the first trainable layer needs gradients, so autograd stops there: with 4 of MiniLM's 6 layers
    frozen a training step skips two thirds of the encoder's backward pass. The layer stack is the encoder's
    ModuleList holding `num_hidden_layers` modules (BERT, RoBERTa, DistilBERT, MPNet, ... all have one).
    """
    if count <= 0:
        return sum(p.numel() for p in model.parameters() if p.requires_grad)
    layers_total = int(getattr(model.encoder.config, "num_hidden_layers", 0))
    stack = next((m for m in model.encoder.modules() if isinstance(m, nn.ModuleList) and len(m) == layers_total), None)
    if stack is None or count > layers_total:
        raise ValueError(f"cannot freeze {count} layers: the encoder has {layers_total or 'no recognisable'} layers")
    embeddings = model.encoder.get_input_embeddings()
    frozen = [*stack[:count]]
    parent = getattr(model.encoder, "embeddings", None)
    frozen.append(parent if isinstance(parent, nn.Module) else embeddings)
    for module in frozen:
        for param in module.parameters():
            param.requires_grad_(False)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _attend(hidden: torch.Tensor, attention_mask: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """The tokens' states averaged with softmax weights from their scaled dot product with `query` (padding: 0)."""
    scores = hidden @ query.to(hidden.dtype) / hidden.shape[-1] ** 0.5
    scores = scores.masked_fill(attention_mask == 0, torch.finfo(scores.dtype).min)
    weights = scores.softmax(dim=1).unsqueeze(-1)
    return (weights * hidden).sum(1)


def _labelled_rows(
    dims: Sequence[Mapping[str, Any]], labels: Mapping[str, torch.Tensor], batch: int, device: torch.device
) -> torch.Tensor:
    rows = torch.zeros(batch, dtype=torch.bool, device=device)
    for dim in dims:
        target = labels.get(dim["name"])
        if target is None:
            continue
        if dim["kind"] == "single":
            rows |= target != IGNORE
        elif dim["kind"] == "multi":
            rows |= target[:, 0] >= 0
        else:
            rows |= (target != IGNORE).flatten(1).any(1)
    return rows


def _scatter_rows(out: torch.Tensor, rows: torch.Tensor, batch: int) -> torch.Tensor:
    """Logits of a row subset placed back into a full batch (zeros elsewhere)."""
    full = out.new_zeros((batch, *out.shape[1:]))
    full[rows] = out
    return full


def encode_views(
    tokenizer: Any,
    config: MultiHeadConfig,
    records: Sequence[Mapping[str, Any]],
    max_length: int | None = None,
    views: Collection[str] | None = None,
) -> list[dict[str, dict[str, list]]]:
    """Tokenize every record for every view (or only the view ids in `views`): per record, view id -> input_ids,
    attention_mask, offsets, ..."""
    max_length = max_length or config.max_seq_length
    per_record: list[dict[str, dict[str, list]]] = [{} for _ in records]
    for view in config.views:
        if views is not None and view.id not in views:
            continue
        texts = [str(r.get(view.field) or "") for r in records]
        if view.pair_field is not None:
            # both from the task: longest_first keeps a long claim from pushing the text out entirely
            firsts = [str(r.get(view.pair_field) or "") for r in records]
            enc = tokenizer(
                firsts, texts, truncation="longest_first", max_length=max_length, return_offsets_mapping=True
            )
        elif view.target is not None:
            enc = tokenizer(
                [view.target] * len(texts),
                texts,
                truncation="only_second",
                max_length=max_length,
                return_offsets_mapping=True,
            )
        else:
            enc = tokenizer(texts, truncation=True, max_length=max_length, return_offsets_mapping=True)
        for i in range(len(texts)):
            sequence_ids = enc.sequence_ids(i)
            item = {k: enc[k][i] for k in enc}
            # Offsets only where a token belongs to the field text; (-1, -1) elsewhere (specials, target tokens).
            item["offset_mapping"] = [
                tuple(o) if s == view.text_segment else (-1, -1)
                for o, s in zip(item["offset_mapping"], sequence_ids, strict=True)
            ]
            per_record[i][view.id] = item
    return per_record


def pad_views(
    items: Sequence[Mapping[str, Mapping[str, list]]], pad_token_id: int = 0
) -> dict[str, dict[str, torch.Tensor]]:
    """Pad a batch of `encode_views` items into tensors, per view (offsets padded with -1)."""
    batch: dict[str, dict[str, torch.Tensor]] = {}
    for view_id in items[0]:
        length = max(len(item[view_id]["input_ids"]) for item in items)
        tensors: dict[str, torch.Tensor] = {}
        for key in items[0][view_id]:
            pad: Any = pad_token_id if key == "input_ids" else 0
            rows = []
            for item in items:
                values = list(item[view_id][key])
                if key == "offset_mapping":
                    rows.append(values + [(-1, -1)] * (length - len(values)))
                else:
                    rows.append(values + [pad] * (length - len(values)))
            tensors[key] = torch.tensor(rows, dtype=torch.long)
        batch[view_id] = tensors
    return batch
