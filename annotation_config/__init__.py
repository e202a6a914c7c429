"""The label schema, the Label Studio labeling config, region conversion, and the fields of Label Studio tasks and
annotations (annotations.py: annotator identity, task key, counted / cancelled / ground truth)."""

from annotation_config.errors import WorkbenchError
from annotation_config.label_config import LabelConfigError, render_label_config, validate_label_config
from annotation_config.regions import Prediction, RegionError, labels_to_results, results_to_labels
from annotation_config.schema import Dimension, Label, Schema, SchemaError, load_schema

__all__ = [
    "Dimension",
    "Label",
    "LabelConfigError",
    "Prediction",
    "RegionError",
    "Schema",
    "SchemaError",
    "WorkbenchError",
    "labels_to_results",
    "load_schema",
    "render_label_config",
    "results_to_labels",
    "validate_label_config",
]
