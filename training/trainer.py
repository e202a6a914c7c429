"""Fine-tuning: dataset rows -> token features with masked labels -> transformers Trainer with early stopping."""

from __future__ import annotations

import logging
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

from annotation_config.errors import WorkbenchError
from annotation_config.schema import Schema
from training.distributed import local_world_size, process_device, world_size
from training.encoder import allowed_cpus, configure_threads, resolve_encoder_path
from training.modeling import (
    BIO,
    IGNORE,
    MultiHeadConfig,
    MultiHeadModel,
    attention_kernels,
    encode_views,
    freeze_lower_layers,
    pad_views,
    quiet_transformers,
    view_of,
)
from training.training_args import TrainingArguments

log = logging.getLogger(__name__)


class TrainingError(WorkbenchError, RuntimeError):
    """Training cannot start or run (no training data, an encoder without a fast tokenizer, ...)."""


@dataclass
class TrainResult:
    """A trained model (best validation epoch restored, in eval mode) and how training went."""

    model: MultiHeadModel
    tokenizer: Any
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: float | None = None
    best_eval_loss: float | None = None
    stopped_early: bool = False
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)  # seconds: tokenize, load, fit
    device: str = "cpu"
    steps: int = 0
    settings: dict[str, Any] = field(default_factory=dict)  # what "auto" and the CPU budget chose for this run
    # data parallelism: {"processes", "per_device_batch", "global_batch"} (one process without a launcher)
    distributed: dict[str, Any] = field(default_factory=dict)


def load_tokenizer(encoder: str | None):
    """The encoder's fast tokenizer (offsets are needed for span labels)."""
    from transformers import AutoTokenizer

    path = resolve_encoder_path(encoder)
    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as error:
        raise TrainingError(f"cannot load the tokenizer of encoder {encoder!r}: {str(error).splitlines()[0]}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise TrainingError(f"encoder {encoder!r} has no fast tokenizer; span labels need offset mappings")
    return tokenizer


def token_tags(
    offsets: Sequence[tuple[int, int]], spans: Sequence[Mapping[str, Any]], labels: Sequence[str]
) -> list[list[int]]:
    """Per token, per span label: 0 (O), 1 (B) or 2 (I) from character spans; IGNORE on non-text tokens.

    A token belongs to a span when their character ranges overlap; the first such token is B.
    """
    index = {label: i for i, label in enumerate(labels)}
    tags = [[IGNORE] * len(labels) if start < 0 or end <= start else [0] * len(labels) for start, end in offsets]
    for span in sorted(spans, key=lambda s: (s["start"], s["end"])):
        j = index.get(span["label"])
        if j is None:
            continue
        first = True
        for t, (start, end) in enumerate(offsets):
            if start < 0 or end <= start or end <= span["start"] or start >= span["end"]:
                continue
            if first:
                tags[t][j] = 1
                first = False
            elif tags[t][j] == 0:
                tags[t][j] = 2
    return tags


def featurize(
    rows: Sequence[Mapping[str, Any]], config: MultiHeadConfig, tokenizer: Any, max_length: int | None = None
) -> list[dict[str, Any]]:
    """Dataset rows -> items with per-view token ids and per-dimension label values (masked when missing)."""
    encoded = encode_views(tokenizer, config, rows, max_length)
    items = []
    for row, views in zip(rows, encoded, strict=True):
        labels: dict[str, Any] = {}
        for dim in config.dimensions:
            value = row.get(dim["name"])
            names = dim["labels"]
            if dim["kind"] == "single":
                labels[dim["name"]] = names.index(value) if value is not None else IGNORE
            elif dim["kind"] == "multi":
                labels[dim["name"]] = [float(n in value) for n in names] if value is not None else [-1.0] * len(names)
            else:
                offsets = views[_view_id(dim)]["offset_mapping"]
                if value is None:
                    labels[dim["name"]] = [[IGNORE] * len(names) for _ in offsets]
                else:
                    labels[dim["name"]] = token_tags(offsets, value, names)
        items.append({"views": views, "labels": labels})
    return items


def _view_id(dim: Mapping[str, Any]) -> str:
    return view_of(dim).id


class Collator:
    """Pads a list of featurized items into {"views": {view: tensors}, "labels": {dimension: tensor}}."""

    def __init__(self, config: MultiHeadConfig, pad_token_id: int = 0) -> None:
        self.config = config
        self.pad_token_id = pad_token_id

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        views = pad_views([item["views"] for item in items], self.pad_token_id)
        for tensors in views.values():
            tensors.pop("offset_mapping", None)
        labels: dict[str, torch.Tensor] = {}
        for dim in self.config.dimensions:
            name = dim["name"]
            values = [item["labels"][name] for item in items]
            if dim["kind"] == "single":
                labels[name] = torch.tensor(values, dtype=torch.long)
            elif dim["kind"] == "multi":
                labels[name] = torch.tensor(values, dtype=torch.float)
            else:
                length = views[_view_id(dim)]["input_ids"].shape[1]
                width = len(dim["labels"])
                labels[name] = torch.tensor(
                    [v + [[IGNORE] * width] * (length - len(v)) for v in values], dtype=torch.long
                )
        return {"views": views, "labels": labels}


class _Items(torch.utils.data.Dataset):
    def __init__(self, items: Sequence[Any]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Any:
        return self.items[index]


def class_weights(
    rows: Sequence[Mapping[str, Any]], config: MultiHeadConfig, items: Sequence[Mapping[str, Any]], limit: float
) -> dict[str, list[float]]:
    """Inverse-frequency weights per head from the training split, clipped to [1/limit, limit].

    single: one weight per class; multi: a positive weight per label (negatives / positives); spans: O/B/I.
    Classes absent from the training data get weight 1.
    """

    def clip(value: float) -> float:
        return float(min(limit, max(1.0 / limit, value)))

    weights: dict[str, list[float]] = {}
    for dim in config.dimensions:
        name, names = dim["name"], dim["labels"]
        if dim["kind"] == "single":
            counts = Counter(r[name] for r in rows if r.get(name) is not None)
            total = sum(counts.values())
            weights[name] = [clip(total / (len(names) * counts[n])) if counts[n] else 1.0 for n in names]
        elif dim["kind"] == "multi":
            answered = [r[name] for r in rows if r.get(name) is not None]
            positives = Counter(label for value in answered for label in value)
            weights[name] = [
                clip((len(answered) - positives[n]) / positives[n]) if positives[n] else 1.0 for n in names
            ]
        else:
            tags = Counter(t for item in items for token in item["labels"][name] for t in token if t != IGNORE)
            total = sum(tags.values())
            weights[name] = [clip(total / (len(BIO) * tags[i])) if tags[i] else 1.0 for i in range(len(BIO))]
    return weights


def train_model(dataset: Mapping[str, Any], schema: Schema, args: TrainingArguments | None = None) -> TrainResult:
    """Fine-tune a multi-head model on `dataset["train"]`, early-stopping on `dataset["validation"]`."""
    from transformers import ProgressCallback, Trainer, TrainerCallback, set_seed
    from transformers import TrainingArguments as HFArguments
    from transformers.trainer_callback import PrinterCallback

    args = args or TrainingArguments()
    started = time.perf_counter()
    train_rows = list(dataset["train"])
    val_rows = list(dataset["validation"]) if "validation" in dataset else []
    if not train_rows:
        raise TrainingError("the training split is empty: accept more annotations first")
    device = process_device(args.resolved_device())
    if device == "cpu":
        # processes launched on one machine share its cores: each taking all of them would oversubscribe them
        configure_threads(args.threads or max(1, allowed_cpus() // local_world_size()))
    set_seed(args.seed)
    tokenizer = load_tokenizer(args.encoder)
    target_encoding = choose_target_encoding(args.target_encoding, schema, train_rows)
    config = MultiHeadConfig.from_schema(
        schema,
        args.encoder,
        target_encoding=target_encoding,
        classifier_dropout=args.classifier_dropout,
        max_seq_length=args.max_length,
    )
    train_items = featurize(train_rows, config, tokenizer)
    val_items = featurize(val_rows, config, tokenizer) if val_rows else []
    phases = {"tokenize": time.perf_counter() - started}
    if args.class_weights:
        config.class_weights = class_weights(train_rows, config, train_items, args.max_class_weight)
    set_seed(args.seed)
    model = MultiHeadModel.with_encoder(config, args.encoder)
    try:
        freeze_lower_layers(model, args.freeze_layers)
    except ValueError as error:
        raise TrainingError(str(error)) from None
    phases["load"] = time.perf_counter() - started - phases["tokenize"]
    epochs = budgeted_epochs(args, device, train_rows, train_items, config)
    settings = {"target_encoding": target_encoding, "epochs": epochs, "probe_epochs": args.probe_epochs}
    collator = Collator(config, tokenizer.pad_token_id or 0)
    mark = time.perf_counter()
    skipped = companion_only_views(config, args) if epochs <= 0 and args.max_steps <= 0 else set()
    if skipped:
        prior_heads(model, train_rows, skipped)
        settings["companion_only_views"] = sorted(skipped)
    probe_items = [
        {**item, "views": {k: v for k, v in item["views"].items() if k not in skipped}} for item in train_items
    ]
    probe_heads(model, train_rows, probe_items, collator, args, device)
    silent = silence_unlabelled_span_heads(model, train_rows)
    if silent:
        settings["unlabelled_span_dimensions"] = silent
    phases["probe"] = time.perf_counter() - mark

    if epochs <= 0 and args.max_steps <= 0:  # the heads on the frozen encoder: no fine-tuning
        model.to(device).eval()
        # nothing is data-parallel here (every launched process probes the same heads) and no batch is fine-tuned
        return TrainResult(
            model=model,
            tokenizer=tokenizer,
            seconds=time.perf_counter() - started,
            phases=phases,
            device=device,
            settings=settings,
            distributed={"processes": 1},
        )

    precision = args.resolved_precision()
    has_val = bool(val_items) and args.early_stopping_patience >= 0
    with tempfile.TemporaryDirectory(prefix="workbench-train-") as scratch:
        hf_args = HFArguments(
            output_dir=scratch,
            num_train_epochs=epochs,
            max_steps=args.max_steps,
            per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=args.eval_batch_size,
            learning_rate=args.learning_rate,
            weight_decay=args.weight_decay,
            warmup_steps=args.warmup_ratio,  # below 1: a ratio of all steps
            lr_scheduler_type="linear",
            eval_strategy="epoch" if has_val else "no",
            save_strategy="no",
            logging_strategy="epoch",
            report_to="none",
            seed=args.seed,
            data_seed=args.seed,
            use_cpu=device == "cpu",
            bf16=precision == "bf16",
            fp16=precision == "fp16",
            disable_tqdm=not args.progress,
            remove_unused_columns=False,
            label_names=["labels"],
            dataloader_pin_memory=device.startswith("cuda"),
            prediction_loss_only=True,
            # A view with no labelled row in a batch skips its encoder pass, so its heads get no gradient on that
            # process: DDP must look for unused parameters or it waits for their gradients forever.
            ddp_find_unused_parameters=True,
        )
        keeper = _KeepBest(args.early_stopping_patience, TrainerCallback)
        trainer = _trainer_class(Trainer)(
            [_item_tokens(item) for item in train_items] if args.group_by_length else None,
            model=model,
            args=hf_args,
            train_dataset=_Items(train_items),
            eval_dataset=_Items(val_items) if has_val else None,
            data_collator=collator,
            callbacks=[keeper.callback],
            optimizers=(_optimizer(model, args), None),
        )
        if not args.progress:
            trainer.remove_callback(PrinterCallback)
            trainer.remove_callback(ProgressCallback)
        fit_started = time.perf_counter()
        with attention_kernels(device):
            trainer.train()
        keeper.restore(model)
        phases["fit"] = time.perf_counter() - fit_started
    model.eval()
    silence_unlabelled_span_heads(model, train_rows)  # fine-tuning's weight decay may have moved them
    history = [dict(entry) for entry in trainer.state.log_history]
    return TrainResult(
        model=model,
        tokenizer=tokenizer,
        history=history,
        best_epoch=keeper.best_epoch,
        best_eval_loss=keeper.best,
        stopped_early=keeper.stopped,
        seconds=time.perf_counter() - started,
        phases=phases,
        device=str(trainer.args.device),
        steps=trainer.state.global_step,
        settings=settings,
        distributed={
            "processes": hf_args.world_size,
            "per_device_batch": args.batch_size,
            "global_batch": hf_args.world_size * args.batch_size,
        },
    )


def choose_target_encoding(requested: str, schema: Schema, rows: Sequence[Mapping[str, Any]]) -> str:
    """The target encoding of a run: `requested`, or for "auto" late when the training rows carry labels for two or
    more targets each on average, else pair.

    Pair encoding costs one encoder pass per labelled target: the sample schema's three targets made four passes a
    task (927 s for 1,000 labels on a 2-core CPU, against 262 s late). A schema that labels one target per text
    (SemEval: one per tweet) pays one pass either way and keeps pair, where the target meets the text in the encoder.
    """
    if requested != "auto":
        return requested
    targeted = [(d.name, d.target.id) for d in schema.dimensions if d.target is not None]
    if not targeted or not rows:
        return "pair"
    per_row = [len({target for name, target in targeted if row.get(name) is not None}) for row in rows]
    return "late" if sum(per_row) / len(per_row) >= 1.5 else "pair"


# all-MiniLM-L6-v2: 6 layers of width 384, the cost unit of TrainingArguments.cpu_budget_tokens
_BUDGET_LAYERS, _BUDGET_WIDTH = 6, 384


def rows_by_view(rows: Sequence[Mapping[str, Any]], config: MultiHeadConfig) -> dict[str, list[int]]:
    """Per view id, the indices of the rows labelled for one of its dimensions: training runs a view on no others."""
    names = {view.id: [d["name"] for d in config.dimensions if view_of(d).id == view.id] for view in config.views}
    return {
        view_id: [i for i, row in enumerate(rows) if any(row.get(name) is not None for name in dims)]
        for view_id, dims in names.items()
    }


def epoch_tokens(
    rows: Sequence[Mapping[str, Any]],
    items: Sequence[Mapping[str, Any]],
    config: MultiHeadConfig,
    batch_size: int = 16,
    seed: int = 0,
) -> int:
    """Padded encoder tokens of one training epoch: per batch and view, the batch's longest labelled row times its
    labelled rows (training runs no other pass, and a step costs what its padding costs). The batches are a seeded
    shuffle like the trainer's, so the figure is deterministic and close to what an epoch pays."""
    import random

    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    labelled = {view_id: set(indices) for view_id, indices in rows_by_view(rows, config).items()}
    total = 0
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        for view_id, on_view in labelled.items():
            lengths = [len(items[i]["views"][view_id]["input_ids"]) for i in batch if i in on_view]
            total += max(lengths, default=0) * len(lengths)
    return total


def budgeted_epochs(
    args: TrainingArguments,
    device: str,
    rows: Sequence[Mapping[str, Any]],
    items: Sequence[Mapping[str, Any]],
    config: MultiHeadConfig,
) -> float:
    """`args.epochs`, cut on CPU to what `args.cpu_budget_tokens` allows (at least one epoch).

    Deterministic: it depends on the data and the encoder's size, not on a clock, so a seeded run repeats.
    """
    if args.max_steps > 0 or args.epochs <= 0 or args.cpu_budget_tokens <= 0 or not device.startswith("cpu"):
        return args.epochs
    encoder = config.encoder_config
    scale = encoder.get("num_hidden_layers", _BUDGET_LAYERS) * encoder.get("hidden_size", _BUDGET_WIDTH) ** 2
    # batches as one process with the global batch draws them: N processes x batch b pick what 1 x N*b picks
    batch = args.batch_size * world_size()
    cost = epoch_tokens(rows, items, config, batch, args.seed) * scale / (_BUDGET_LAYERS * _BUDGET_WIDTH**2)
    if cost <= 0:
        return args.epochs
    return round(max(min(args.epochs, 1.0), min(args.epochs, args.cpu_budget_tokens / cost)), 2)


class _CachedEncoder(nn.Module):
    """The frozen encoder's last hidden states, computed once per distinct input (the probe stage's encoder).

    An input's states depend only on its token ids (eval mode, no dropout), so the ids are the key. States are kept
    in float16: half the memory, and ample precision for fitting heads. Assumes right padding, like the model.
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self._encoder = [encoder]  # a list: not registered, so its weights are not the probe's parameters
        self.config = encoder.config
        self.cache: dict[tuple[int, ...], torch.Tensor] = {}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **inputs: torch.Tensor) -> Any:
        lengths = attention_mask.sum(1).tolist()
        keys = [tuple(input_ids[i, : lengths[i]].tolist()) for i in range(len(lengths))]
        missing = [i for i, key in enumerate(keys) if key not in self.cache]
        if missing:
            encoder = self._encoder[0]
            width = max(lengths[i] for i in missing)
            sub = {"input_ids": input_ids, "attention_mask": attention_mask, **inputs}
            sub = {k: v[missing][:, :width] for k, v in sub.items()}
            with torch.no_grad():
                hidden = encoder(**sub).last_hidden_state
            for j, i in enumerate(missing):
                self.cache[keys[i]] = hidden[j, : lengths[i]].to(torch.float16)
        out = torch.zeros(
            (len(keys), input_ids.shape[1], self.config.hidden_size), dtype=torch.float32, device=input_ids.device
        )
        for i, key in enumerate(keys):
            out[i, : lengths[i]] = self.cache[key].float()
        return SimpleNamespace(last_hidden_state=out)


def _to_device(value: Any, device: str) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    return {k: _to_device(v, device) for k, v in value.items()}


PROBE_BATCH_SIZE = 64


def _fill_cache(
    cached: _CachedEncoder,
    config: MultiHeadConfig,
    rows: Sequence[Mapping[str, Any]],
    items: Sequence[Mapping[str, Any]],
    pad_token_id: int,
    device: str,
) -> None:
    """Encode, once, every view a training row is labelled for, in batches of similar length: random batches of
    paragraphs pad to about twice their real tokens, sorted ones hardly at all."""
    probed = set(items[0]["views"]) if items else set()  # the passes the probe reads (`companion_only_views`)
    with torch.no_grad():
        for view_id, todo in rows_by_view(rows, config).items():
            if view_id not in probed:
                continue
            todo = sorted(todo, key=lambda i: len(items[i]["views"][view_id]["input_ids"]))
            for start in range(0, len(todo), PROBE_BATCH_SIZE):
                batch = [{view_id: items[i]["views"][view_id]} for i in todo[start : start + PROBE_BATCH_SIZE]]
                inputs = pad_views(batch, pad_token_id)[view_id]
                inputs.pop("offset_mapping", None)
                cached(**{k: v.to(device) for k, v in inputs.items()})


def companion_only_views(config: MultiHeadConfig, args: TrainingArguments) -> set[str]:
    """Without fine-tuning, the views whose heads' answers weigh nothing: every dimension on them is a choice and the
    n-gram and embedding heads take the whole weight (training/blend.py). Probing them would cost an encoder pass per
    training row (FNC-1, 5,000 pairs: 345 of 611 s) for answers the served blend multiplies by 0."""
    if args.ngram_weight + args.embedding_weight < 1.0 - 1e-9:
        return set()
    return {
        view.id
        for view in config.views
        if all(d["kind"] != "spans" for d in config.dimensions if view_of(d).id == view.id)
    }


@torch.no_grad()
def prior_heads(model: MultiHeadModel, rows: Sequence[Mapping[str, Any]], views: set[str]) -> None:
    """Heads on `views` that answer the training rows' label frequencies whatever the text: zero weights, the log of
    the (add-one smoothed) prior as the bias. The served blend weighs them only where a companion has no head of its
    own for a dimension (one class seen so far, too few rows): then the prior is the honest answer."""
    for dim in model.config.dimensions:
        if view_of(dim).id not in views:
            continue
        answers = [row[dim["name"]] for row in rows if row.get(dim["name"]) is not None]
        labels = list(dim["labels"])
        counts = np.ones(len(labels))
        for answer in answers:
            for value in [answer] if dim["kind"] == "single" else answer:
                counts[labels.index(value)] += 1
        head = model.heads[dim["name"]]
        head.weight.zero_()
        if dim["kind"] == "single":
            head.bias.copy_(torch.as_tensor(np.log(counts / counts.sum()), dtype=head.bias.dtype))
        else:  # one sigmoid per label: the logit of its share of rows
            share = counts / (len(answers) + 2)
            head.bias.copy_(torch.as_tensor(np.log(share / (1 - share)), dtype=head.bias.dtype))


@torch.no_grad()
def silence_unlabelled_span_heads(model: MultiHeadModel, rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Span heads no training row taught answer "no span" everywhere (zero weights, O far above B and I); returns
    their dimensions. Left as initialised, such a head put P(inside) near 2/3 on every token: a trained model whose
    annotators labelled only choices marked ~75 meaningless evidence spans on each sample paragraph."""
    silent = []
    for dim in model.config.dimensions:
        if dim["kind"] != "spans" or any(row.get(dim["name"]) for row in rows):
            continue
        head = model.heads[dim["name"]]
        head.weight.zero_()
        bias = torch.zeros(len(dim["labels"]), len(BIO), dtype=head.bias.dtype, device=head.bias.device)
        bias[:, BIO.index("O")] = 10.0
        head.bias.copy_(bias.flatten())
        silent.append(dim["name"])
    return silent


def probe_heads(
    model: MultiHeadModel,
    rows: Sequence[Mapping[str, Any]],
    items: Sequence[Mapping[str, Any]],
    collator: Collator,
    args: TrainingArguments,
    device: str,
) -> None:
    """Fit the heads (and late-encoding target queries) on the frozen encoder's states: a linear probe.

    The first stage of LP-FT (Kumar et al., 2022): fine-tuning that starts from fitted heads distorts the pretrained
    features less than one that starts from random heads, which matters with tens to hundreds of labels. The encoder
    runs once per distinct input (no gradient); every later epoch reads the cache, so the stage takes seconds.
    Batches of at least PROBE_BATCH_SIZE rows: a head step is cheap, its per-step overhead is not.

    The probed state only starts fine-tuning; it does not compete with it on validation loss. It did at first,
    and on SemEval tweets fine-tuning's loss rose in its first two epochs, so early stopping kept the probe (0.568
    against the instant learner's 0.663), where fine-tuning on to the end had scored 0.614.
    """
    if args.probe_epochs <= 0 or not items:
        return
    encoder = model.encoder
    was_training = encoder.training
    model.to(device)
    encoder.eval()
    model.encoder = cached = _CachedEncoder(encoder)
    try:
        _fill_cache(cached, model.config, rows, items, collator.pad_token_id, device)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=args.head_learning_rate, weight_decay=args.weight_decay)
        order = torch.Generator().manual_seed(args.seed)
        loader = torch.utils.data.DataLoader(
            _Items(items),
            batch_size=max(args.batch_size, PROBE_BATCH_SIZE),
            shuffle=True,
            generator=order,
            collate_fn=collator,
        )
        model.train()
        for _ in range(args.probe_epochs):
            for batch in loader:
                loss = model(**_to_device(batch, device)).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
    finally:
        model.encoder = encoder
        encoder.train(was_training)


def _item_tokens(item: Mapping[str, Any]) -> int:
    """The tokens an item feeds the encoder, over all its views (what padding to a batch's longest item wastes)."""
    return sum(len(view["input_ids"]) for view in item["views"].values())


# Batches per length-sorted group. transformers' default (up to 50) groups near-duplicate paragraphs of equal length
# (reprinted wire copy, boilerplate) into the same batches; 4 keeps batches mixed and still cuts padding on the
# sample corpus from 1.56x the real tokens (random batches of 16) to 1.16x (1.07x with 12).
LENGTH_GROUP_BATCHES = 4


class LengthGroupedSampler(torch.utils.data.Sampler):
    """Shuffled groups of LENGTH_GROUP_BATCHES batches, sorted by length inside (transformers' grouping).

    `batch_size` is the global batch (per-device batch x processes): under data parallelism accelerate deals
    consecutive per-device batches of this order to the processes in turn, so each global batch is one sorted run,
    the same one a single process with the global batch draws. The order comes from `seed` and the epoch alone
    (not torch's global generator, which dropout advances differently on each process), so every process computes
    the same order and their shards neither overlap nor miss rows.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.lengths)

    def set_epoch(self, epoch: int) -> None:
        """Draw the order of `epoch` next (the Trainer calls this before each epoch)."""
        self.epoch = epoch

    def __iter__(self):  # noqa: ANN204
        from transformers.trainer_pt_utils import get_length_grouped_indices

        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1  # a caller that never calls set_epoch still gets a new order each epoch
        return iter(
            get_length_grouped_indices(
                self.lengths, self.batch_size, mega_batch_mult=LENGTH_GROUP_BATCHES, generator=generator
            )
        )


def _trainer_class(base: type) -> type:
    """transformers' Trainer, drawing training batches of similar length when given item lengths (--group-by-length).

    Validation batches go shortest first: the loss does not depend on order. Off by default: on the sample corpus it
    cut START -> serving by 11-26% but scored 0.04-0.06 lower after one epoch (two seeds; BENCHMARKS.md).
    """

    class LengthGroupedTrainer(base):  # type: ignore[misc, valid-type]
        def __init__(self, lengths: list[int] | None, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.item_lengths = lengths

        def _get_train_sampler(self, train_dataset=None):  # noqa: ANN001, ANN202 (transformers' signature)
            if self.item_lengths is None:
                return super()._get_train_sampler(train_dataset)
            # grouped by the global batch, so N processes x batch b draw what one process x batch N*b draws
            global_batch = self.args.train_batch_size * self.args.world_size
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            return LengthGroupedSampler(self.item_lengths, global_batch, seed=seed)

        def _get_eval_sampler(self, eval_dataset):  # noqa: ANN001, ANN202
            if self.item_lengths is None:
                return super()._get_eval_sampler(eval_dataset)
            return sorted(range(len(eval_dataset)), key=lambda i: _item_tokens(eval_dataset[i]))

    return LengthGroupedTrainer


def _optimizer(model: MultiHeadModel, args: TrainingArguments) -> torch.optim.Optimizer:
    """AdamW with the encoder at `learning_rate` and the heads at `head_learning_rate`; no decay on norms/biases."""
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        head = not name.startswith("encoder.")
        decay = param.ndim >= 2
        groups.setdefault((head, decay), []).append(param)
    return torch.optim.AdamW(
        [
            {
                "params": params,
                "lr": args.head_learning_rate if head else args.learning_rate,
                "weight_decay": args.weight_decay if decay else 0.0,
            }
            for (head, decay), params in sorted(groups.items())
        ],
        lr=args.learning_rate,
    )


class _KeepBest:
    """Early stopping on validation loss, keeping the best weights in memory (no checkpoints on disk)."""

    def __init__(self, patience: int, base: type) -> None:
        self.patience = patience
        self.best: float | None = None
        self.best_epoch: float | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad = 0
        self.stopped = False
        keeper = self

        class Callback(base):  # type: ignore[misc, valid-type]
            def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):  # noqa: ANN001
                loss = (metrics or {}).get("eval_loss")
                if loss is None or model is None:
                    return control
                if keeper.best is None or loss < keeper.best - 1e-6:
                    keeper.best, keeper.best_epoch, keeper.bad = float(loss), state.epoch, 0
                    keeper.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                else:
                    keeper.bad += 1
                    if keeper.patience > 0 and keeper.bad >= keeper.patience:
                        keeper.stopped = True
                        control.should_training_stop = True
                return control

        self.callback = Callback()

    def restore(self, model: torch.nn.Module) -> None:
        """Load the best weights seen (no-op without validation)."""
        if self.best_state is not None:
            model.load_state_dict(self.best_state)


__all__ = [
    "Collator",
    "TrainResult",
    "TrainingError",
    "budgeted_epochs",
    "choose_target_encoding",
    "class_weights",
    "epoch_tokens",
    "featurize",
    "load_tokenizer",
    "probe_heads",
    "rows_by_view",
    "token_tags",
    "train_model",
]
