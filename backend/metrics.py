"""Prometheus metrics of one app instance (own registry, so several apps in one process do not clash)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    """Requests, latency, the model version served, predictions by dimension and label, training jobs."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "workbench_requests", "HTTP requests by route and status.", ["route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "workbench_request_seconds",
            "Request latency by route.",
            ["route"],
            buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30),
            registry=self.registry,
        )
        self.tasks = Counter("workbench_predicted_tasks", "Tasks predicted.", registry=self.registry)
        self.predictions = Counter(
            "workbench_predictions",
            "Predicted labels by dimension and label (spans count regions).",
            ["dimension", "label"],
            registry=self.registry,
        )
        self.model = Gauge(
            "workbench_model_info", "The model serving (value 1).", ["model_version", "kind"], registry=self.registry
        )
        self.training_jobs = Counter(
            "workbench_training_jobs", "Training jobs by outcome.", ["outcome"], registry=self.registry
        )
        self.webhooks = Counter(
            "workbench_webhook_events", "Webhook events by action.", ["action"], registry=self.registry
        )

    def serving(self, model_version: str, kind: str) -> None:
        """Record which model serves now."""
        self.model.clear()
        self.model.labels(model_version=model_version, kind=kind).set(1)

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
