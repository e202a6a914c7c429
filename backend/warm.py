"""What a warm training worker imports once, so that forked training jobs start without importing anything heavy.

Imported by backend.jobs.WarmLauncher's forkserver. Importing must not initialise CUDA or torch's OpenMP thread
pool (neither survives a fork): torch.cuda.is_available() is answered through NVML, which creates no CUDA context.
"""

from __future__ import annotations

import os

os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# ruff: noqa: E402, F401  (imported for their side effect: loaded once, shared by every forked job)
import datasets
import label_studio_sdk
import matplotlib

matplotlib.use("Agg")  # what training/evaluation.py selects for its plots
import matplotlib.pyplot
import sklearn.metrics
import sklearn.model_selection
import torch
import transformers
import transformers.trainer
from huggingface_hub import ModelCard

import backend.train_job
import training.calibration
import training.evaluation
import training.model_card
import training.pipeline
import training.predict
import training.trainer
