"""`python -m training`: the training commands on their own (train, evaluate, models)."""

from training.cli import main

main()
