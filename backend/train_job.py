"""A training job's entry point: `training`'s command line, with the instant learner as the gate's rival.

The job runner (backend/jobs.py) starts `python -m backend.train_job ARGS` (cold) or calls `main(ARGS)` in a child
of the warm worker (backend/warm.py). ARGS are `training`'s own, e.g. `train --quiet --models DIR --if-new-data`.
"""

from __future__ import annotations

from collections.abc import Sequence

from backend.instant_rival import instant_rival_report
from training.cli import TrainingHooks
from training.cli import main as training_main


def main(args: Sequence[str] | None = None) -> None:
    """Run `training`'s command line on `args` (default: the command line); exits with the command's code."""
    training_main(args, TrainingHooks(rival=instant_rival_report))


if __name__ == "__main__":
    main()
