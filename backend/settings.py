"""Backend settings, from environment variables (WORKBENCH_*) or arguments; one pydantic-settings class."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# A list read from one environment variable as "a,b" (NoDecode: not as JSON, which pydantic-settings expects).
CommaList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    """Every knob of the ML backend. Environment variables are WORKBENCH_<NAME> unless noted."""

    model_config = SettingsConfigDict(env_prefix="WORKBENCH_", populate_by_name=True, extra="ignore")

    schema_path: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("WORKBENCH_SCHEMA", "schema_path"),
        description="Label schema YAML (default: the sample schema).",
    )
    models_dir: Path = Field(default=Path("models"), description="Model registry folder.")
    encoder: str | None = Field(default=None, description="Encoder for the cold-start predictor (path or Hub name).")
    quantize: bool = Field(default=False, description="int8 on the torch runtime (same as WORKBENCH_PRECISION=int8).")
    runtime: Literal["torch", "onnx"] = Field(
        default="onnx",
        description="Cold-start encoder runtime: onnx (ONNX Runtime; falls back to torch fp32 if unusable) or torch.",
    )
    precision: Literal["fp32", "bf16", "int8"] | None = Field(
        default=None,
        description="Cold-start encoder precision (bf16: torch only). Unset: int8 on onnx; on torch fp32, or int8 "
        "with WORKBENCH_QUANTIZE.",
    )
    trained_runtime: Literal["auto", "onnx-int8", "onnx-fp32", "torch-fp32"] = Field(
        default="auto",
        description="What runs a fine-tuned model: auto (the ONNX graph that passed the version's check against "
        "torch: int8, else fp32; else torch fp32), or one of them.",
    )
    onnx_cache_dir: Path | None = Field(
        default=None, description="Where exported ONNX graphs are cached (default: ~/.cache/stance-workbench/onnx)."
    )
    threads: int | None = Field(default=None, description="torch intra-op threads (default: all allowed CPUs).")
    cache_size: int = Field(default=4096, ge=0, description="Paragraph embeddings kept in memory (0: no cache).")

    max_tasks: int = Field(default=256, ge=1, description="Most tasks accepted in one /predict request.")
    max_text_chars: int = Field(default=20_000, ge=1, description="Longest text accepted in a task field.")
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024, description="Largest request body (413 above).")

    basic_auth_user: str | None = Field(
        default=None,
        description="Require HTTP basic auth on every route but /health (/predict, /setup, /webhook, /versions, "
        "/metrics, /docs, /redoc, /openapi.json). Off loopback it is required (see insecure_no_auth).",
    )
    basic_auth_password: SecretStr | None = Field(default=None, description="Set with basic_auth_user, or neither.")
    insecure_no_auth: bool = Field(
        default=False,
        description="Listen off loopback without basic auth anyway (`serve --insecure-no-auth`); logs a warning at "
        "start. Without it, a non-loopback interface with no WORKBENCH_BASIC_AUTH_USER / _PASSWORD refuses to start.",
    )
    host: str | None = Field(
        default=None,
        description="The interface the backend listens on (`serve` sets it). Requests whose Host header names another "
        "server are refused with 400 (DNS rebinding); see allowed_hosts. Unset: no Host check.",
    )
    allowed_hosts: CommaList = Field(
        default_factory=list,
        description="Host names (comma-separated) accepted in the Host header besides the loopback names and the "
        "interface address itself. Listening on all interfaces (0.0.0.0, ::) needs the names clients use, e.g. "
        "the name Label Studio reaches the backend by, or '*' to accept any Host (no DNS-rebinding check): "
        "without either the backend refuses to start.",
    )
    webhook_secret: SecretStr | None = Field(
        default=None,
        description="Shared secret Label Studio sends in the X-Workbench-Webhook-Secret header of its webhooks "
        "(`provision` and `up` register it; `up` generates and keeps one in credentials.json). When set, a /webhook "
        "without the right header gets 401 and changes nothing. Unset: webhooks are learned as sent (a laptop, "
        "tests), so set it, or basic auth, wherever others can reach the backend.",
    )
    max_spans: int = Field(
        default=50, ge=0, description="Most span regions in one task's prediction (the highest-scoring are kept)."
    )
    allowed_ls_urls: CommaList = Field(
        default_factory=list,
        description="Label Studio URLs, besides LABEL_STUDIO_URL, that a /setup may name for training jobs "
        "(comma-separated). Other hostnames from /setup are ignored.",
    )

    projects: CommaList = Field(
        default_factory=list,
        description="Label Studio project ids this backend serves (comma-separated, e.g. 1,4); requests and events "
        "naming another project get 403 and change nothing. Empty: any project.",
    )
    max_projects: int = Field(
        default=50,
        ge=1,
        description="Projects whose learners and models are held at once; the least recently used one is dropped "
        "first and reads its stored annotations again when it comes back.",
    )
    instant_learner: bool = Field(
        default=True,
        description="Learn from every accepted annotation (per project) and serve that until a fine-tuned model is "
        "promoted; false: cold start until then.",
    )
    reload_interval: float = Field(default=2.0, gt=0, description="Seconds between checks for a newly promoted model.")
    train_every: int = Field(
        default=0, ge=0, description="Start training after this many new accepted annotations (0: only on request)."
    )
    train_args: str = Field(
        default="", description="Extra `workbench train` options for jobs the backend starts, e.g. '--epochs 3'."
    )
    train_warm: bool = Field(
        default=True,
        description="Fork training jobs from a warm worker that imported torch and transformers once (saves their "
        "imports, 4-18 s, per job); false: a fresh `workbench train` process per job.",
    )
    label_studio_url: str | None = Field(
        default=None, validation_alias=AliasChoices("LABEL_STUDIO_URL", "label_studio_url")
    )
    label_studio_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("LABEL_STUDIO_API_KEY", "label_studio_api_key")
    )
    record_dir: Path | None = Field(
        default=None, description="Save every request body here, secrets redacted (protocol debugging)."
    )
    keep_versions: int = Field(
        default=10,
        ge=1,
        description="Model versions kept after each training run (the current and previous ones always stay).",
    )
    train_timeout: float = Field(
        default=0, ge=0, description="Seconds a training job may run before it is stopped (0: no limit)."
    )

    @field_validator("allowed_hosts", "allowed_ls_urls", "projects", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        # An environment variable holds "a,b"; pydantic-settings would want JSON for a list.
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @property
    def basic_auth(self) -> tuple[str, str] | None:
        """(user, password) when basic auth is on, else None (a half configuration never validates)."""
        if self.basic_auth_user and self.basic_auth_password:
            return self.basic_auth_user, self.basic_auth_password.get_secret_value()
        return None

    def serves_project(self, project: str | None) -> bool:
        """Whether a request naming `project` ("<id>" or "<id>.<timestamp>"; None: none) may be served: always
        when WORKBENCH_PROJECTS is empty, else only for the ids it lists."""
        if not self.projects:
            return True
        return project is not None and str(project).split(".")[0].strip() in self.projects

    @property
    def on_loopback(self) -> bool:
        """Whether the backend listens on loopback only (an unset host counts: nothing else was asked for)."""
        return self.host is None or is_loopback(self.host)

    def exposure_problem(self) -> str | None:
        """Why these settings must not start a server on `host` (one line), or None: the one rule for `serve`,
        `up` and `create_app`. Off loopback: basic auth (or WORKBENCH_INSECURE_NO_AUTH), and on all interfaces
        the Host names clients use (WORKBENCH_ALLOWED_HOSTS)."""
        if self.on_loopback:
            return None
        if self.basic_auth is None and not self.insecure_no_auth:
            return (
                f"listening on {self.host} (not loopback) without basic auth: set WORKBENCH_BASIC_AUTH_USER and "
                "WORKBENCH_BASIC_AUTH_PASSWORD, or pass --insecure-no-auth (WORKBENCH_INSECURE_NO_AUTH=true)"
            )
        if is_wildcard(self.host or "") and not self.allowed_hosts:
            return (
                f"listening on all interfaces ({self.host}) needs WORKBENCH_ALLOWED_HOSTS: the host names clients "
                "such as Label Studio use to reach the backend (comma-separated), or '*' to accept any"
            )
        return None

    def trusted_hosts(self) -> list[str] | None:
        """Host header values the backend answers (against DNS rebinding); None: no check (host unset, or '*')."""
        if self.host is None or "*" in self.allowed_hosts:
            return None
        own = [] if self.on_loopback else [self.host.strip("[]"), f"[{self.host.strip('[]')}]"]
        return ["127.0.0.1", "localhost", "::1", "[::1]", *own, *self.allowed_hosts]

    @property
    def label_studio_urls(self) -> set[str]:
        """The Label Studio servers training jobs may talk to, as origins (see `origin`)."""
        urls = [self.label_studio_url, *self.allowed_ls_urls]
        return {origin(url) for url in urls if url}

    def allows_label_studio(self, url: str) -> bool:
        """Whether `url` is a Label Studio the operator configured (LABEL_STUDIO_URL or WORKBENCH_ALLOWED_LS_URLS)."""
        return origin(url) in self.label_studio_urls

    @property
    def encoder_precision(self) -> str:
        """The precision the cold-start encoder is asked for (see `precision`)."""
        if self.precision:
            return self.precision
        return "int8" if self.quantize or self.runtime == "onnx" else "fp32"

    @model_validator(mode="after")
    def _basic_auth_complete(self) -> Settings:
        # Half a configuration must not silently mean "no auth".
        user = bool(self.basic_auth_user)
        password = bool(self.basic_auth_password and self.basic_auth_password.get_secret_value())
        if user != password:
            given, missing = (
                ("WORKBENCH_BASIC_AUTH_USER", "WORKBENCH_BASIC_AUTH_PASSWORD")
                if user
                else ("WORKBENCH_BASIC_AUTH_PASSWORD", "WORKBENCH_BASIC_AUTH_USER")
            )
            raise ValueError(f"{given} is set but {missing} is not: set both to require basic auth, or neither")
        return self

    @model_validator(mode="after")
    def _runtime_supports_precision(self) -> Settings:
        if self.runtime == "onnx" and self.encoder_precision == "bf16":
            raise ValueError("WORKBENCH_PRECISION=bf16 needs WORKBENCH_RUNTIME=torch (ONNX Runtime: fp32 or int8)")
        return self


def is_loopback(host: str) -> bool:
    """Whether an interface name or address is the loopback one (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    """Whether an interface address means every interface (0.0.0.0, ::, or an empty name)."""
    return host.strip("[]") in ("", "0.0.0.0", "::")


def origin(url: str) -> str:
    """scheme://host:port of a URL, lower-cased, with the default port filled in: what "the same server" means."""
    parts = urlsplit(url.strip())
    scheme = (parts.scheme or "http").lower()
    try:
        port = parts.port
    except ValueError:  # a port that is not a number can match nothing configured
        return url.strip().lower()
    port = port or (443 if scheme == "https" else 80)
    return f"{scheme}://{(parts.hostname or '').lower()}:{port}"
