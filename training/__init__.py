"""Fine-tuning on accepted labels: acceptance policy and splits, the multi-head model, training, calibration,
evaluation, the registry (versions, gate, promotion, rollback), the trained predictor and the model card.

The public API (torch-free to import; torch loads when a run starts):

    from training import AcceptancePolicy, Registry, TrainingArguments, accept, run_training

    outcome = run_training(tasks, schema, "models", TrainingArguments(epochs=3))
    Registry("models").current()

`python -m training` runs the command line (train, evaluate, models list|promote|rollback); the trained predictor
is training.predict.TrainedPredictor (imports torch).
"""

from training.data import AcceptancePolicy, AcceptedData, Example, accept
from training.pipeline import GateRival, TrainingOutcome, run_training
from training.registry import PromotionResult, Registry
from training.training_args import TrainingArguments

__all__ = [
    "AcceptancePolicy",
    "AcceptedData",
    "Example",
    "GateRival",
    "PromotionResult",
    "Registry",
    "TrainingArguments",
    "TrainingOutcome",
    "accept",
    "run_training",
]
