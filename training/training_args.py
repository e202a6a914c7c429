"""Every knob of a training run, with defaults: one dataclass, stored in each model's manifest."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from training.encoder import DEFAULT_ENCODER

TARGET_ENCODINGS = ("pair", "late")  # see training/modeling.py
TARGET_ENCODING_CHOICES = ("auto", *TARGET_ENCODINGS)  # auto: chosen from the training rows (training/trainer.py)


@dataclass
class TrainingArguments:
    """Hyper-parameters and run settings of `train_model` / `run_training`."""

    encoder: str = DEFAULT_ENCODER  # a local folder or a Hub name found in the local cache
    # Fine-tuning epochs, an upper bound (early stopping and the CPU budget may end sooner). 0, the default: no
    # fine-tuning; the encoder stays as pretrained and the served answers come from the closed-form embedding and
    # n-gram heads (on SemEval-2016 CV fine-tuning added nothing to them at 5-10x the time: BENCHMARKS.md).
    epochs: float = 0.0
    max_steps: int = -1  # > 0 overrides epochs (quick runs, tests)
    batch_size: int = 16
    eval_batch_size: int = 64
    learning_rate: float = 5e-5  # the encoder
    head_learning_rate: float = 1e-3  # the freshly initialised heads learn faster
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_length: int = 160  # tokens per encoder pass (target + text for stance)
    classifier_dropout: float = 0.1
    seed: int = 42
    split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    early_stopping_patience: int = 2  # epochs without a better validation loss; 0 disables early stopping
    class_weights: bool = True  # inverse-frequency weights (clipped) in every head's loss
    max_class_weight: float = 10.0
    calibrate: bool = True  # temperature scaling per head on the validation split
    calibration_min_examples: int = 20  # fewer labelled validation rows for a head: keep T = 1 (no overfitting)
    # per multi-choice head, the decision threshold that maximises validation micro-F1 (with as many labelled
    # validation rows as calibration needs; else 0.5)
    tune_thresholds: bool = True
    # ... with at least this many labelled validation rows (fewer: 0.5). On the sample dev set at 80 labels one
    # article's 23 validation rows chose 0.65 and cost 0.035-0.06 frames micro-F1; SemEval-2021 T6's 75 rows gain
    # 1.4 points (BENCHMARKS.md, issue 15 round 5)
    threshold_min_examples: int = 50
    device: str = "auto"  # "auto" (CUDA when present, else CPU), "cpu" or "cuda" (pick a GPU: CUDA_VISIBLE_DEVICES)
    mixed_precision: str = "auto"  # "auto" (bf16 on CUDA that supports it), "no", "bf16", "fp16"
    threads: int | None = None  # CPU intra-op threads (default: all CPUs this process may use)
    # "pair": (target, text) passes; "late": one pass, per-target attention heads; "auto": late when the rows are
    # labelled for two or more targets each (pair would cost a pass per target), else pair
    target_encoding: str = "auto"
    # The heads first learn on the frozen encoder's cached states for this many epochs (a linear probe: seconds),
    # then fine-tuning starts from them (LP-FT). 0: off.
    probe_epochs: int = 30
    # On CPU, fewer epochs (never below 1) when epochs x the padded encoder tokens of one epoch would pass this
    # budget, counted at all-MiniLM-L6-v2's cost per token (scaled by layers x hidden size^2 for other encoders; about
    # 1,500 tokens a second on 2 cores). 0: no budget.
    cpu_budget_tokens: int = 200_000
    # The served probabilities per choice dimension: (1 - w) x the encoder's + w x an n-gram logistic head's, both
    # fitted on the training rows (training/ngram.py). 0: the encoder alone.
    ngram_weight: float = 0.5
    # ... and + w x a logistic head's on the encoder's sentence embedding of the text (training/embedding_heads.py);
    # the encoder's own heads get 1 - ngram_weight - embedding_weight (by default nothing: their choice answers are
    # still reported as "<split>_encoder", and span dimensions always come from the encoder). 0: no embedding heads.
    embedding_weight: float = 0.5
    # A multi-choice label's n-gram head needs this many ticked training rows; below it the embedding heads (which
    # read the cold start's answer) take that label's whole share. On the sample dev set at 20 / 40 labels the
    # n-gram heads of frames ticked 1-4 times damped right ticks: frames micro-F1 0.757 / 0.791 with 1, 0.775 /
    # 0.801 with 5 (BENCHMARKS.md, issue 15 round 6)
    ngram_min_ticks: int = 5
    # the cold start's answers as features of the embedding and n-gram heads, times this weight, and as the answer
    # where no companion learnt anything (training/prior.py). 0: neither
    prior_weight: float = 10.0  # 3 and 10 tried on the sample dev set (BENCHMARKS.md, issue 15 round 4)
    # after scoring, refit the n-gram and embedding heads on every accepted row (train + validation + test) for
    # serving; the metrics stay those of the train-split heads on unseen rows
    refit_heads: bool = True
    # export the encoder to ONNX int8 with the version; it serves if its test-split scores match torch fp32's
    # (training/onnx_serving.py)
    onnx: bool = True
    group_by_length: bool = False  # batches of similar length: less padding, faster steps, lower scores measured
    freeze_layers: int = 0  # freeze the embeddings and this many lower encoder layers: no backward pass through them
    progress: bool = True  # a progress bar and per-epoch losses on the console
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes kept in the manifest

    def __post_init__(self) -> None:
        problems = []
        if self.epochs < 0:
            problems.append(f"epochs must be >= 0 (got {self.epochs})")
        if self.epochs == 0 and self.max_steps <= 0 and self.probe_epochs <= 0:
            problems.append("epochs 0 (no fine-tuning) needs probe-epochs > 0: the heads must learn somewhere")
        for name in ("batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name.replace('_', '-')} must be >= 1 (got {getattr(self, name)})")
        if self.max_length < 8:
            problems.append(f"max-length must be >= 8 tokens (got {self.max_length})")
        for name in ("learning_rate", "head_learning_rate"):
            if getattr(self, name) <= 0:
                problems.append(f"{name.replace('_', '-')} must be > 0 (got {getattr(self, name)})")
        if self.early_stopping_patience < 0:
            problems.append(f"patience must be >= 0 (got {self.early_stopping_patience})")
        if self.freeze_layers < 0:
            problems.append(f"freeze-layers must be >= 0 (got {self.freeze_layers})")
        if self.threads is not None and self.threads < 1:
            problems.append(f"threads must be >= 1 (got {self.threads})")
        if self.target_encoding not in TARGET_ENCODING_CHOICES:
            choices = ", ".join(TARGET_ENCODING_CHOICES)
            problems.append(f"target-encoding must be one of {choices} (got {self.target_encoding!r})")
        for name in ("probe_epochs", "cpu_budget_tokens", "threshold_min_examples", "ngram_min_ticks"):
            if getattr(self, name) < 0:
                problems.append(f"{name.replace('_', '-')} must be >= 0 (got {getattr(self, name)})")
        for name in ("ngram_weight", "embedding_weight"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name.replace('_', '-')} must be between 0 and 1 (got {getattr(self, name)})")
        if self.prior_weight < 0:
            problems.append(f"prior-weight must be >= 0 (got {self.prior_weight})")
        if self.ngram_weight + self.embedding_weight > 1.0 + 1e-9:
            problems.append(
                f"ngram-weight + embedding-weight must be at most 1 (got {self.ngram_weight + self.embedding_weight})"
            )
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            problems.append(f"mixed-precision must be auto, no, bf16 or fp16 (got {self.mixed_precision!r})")
        if problems:
            raise ValueError("; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready hyper-parameters (for the manifest and the model card)."""
        out = asdict(self)
        out["split_ratios"] = list(self.split_ratios)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainingArguments:
        """Arguments from a manifest's dict (unknown keys are ignored)."""
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in values.items() if k in known}
        if "split_ratios" in kwargs:
            kwargs["split_ratios"] = tuple(kwargs["split_ratios"])
        return cls(**kwargs)

    def resolved_device(self) -> str:
        """The torch device string this run uses."""
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def resolved_precision(self) -> str:
        """The mixed precision this run uses: "no", "bf16" or "fp16"."""
        if self.mixed_precision != "auto":
            return self.mixed_precision
        if not self.resolved_device().startswith("cuda"):
            return "no"
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
