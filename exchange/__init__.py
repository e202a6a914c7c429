"""Datasets in and out: the Hugging Face dataset export with its card, import of CSV / JSONL / Label Studio / dataset
folders into Label Studio, inter-annotator agreement, and their commands (`workbench export|import|agreement`).

  dataset.py       the export: both configurations (aggregated, raw) as a dataset folder, and the push to the Hub
  bundle.py        an export in memory, shared by the writer and the card
  dataset_card.py  the dataset card (README.md) from dataset_card_template.md
  importer.py      reading labelled files and writing them into a Label Studio project
  agreement.py     Krippendorff's alpha, Cohen's kappa, percent agreement, the adjudication list
  cli.py           the typer commands
"""
