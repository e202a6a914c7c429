"""Label Studio down, slow or failing while training or exporting (issue 7): bounded retries with backoff, then ONE
clear error line and exit 1, and nothing written where the models or the dataset would go.

The retry policy lives in `studio.provision` (LS_ATTEMPTS tries, LS_BACKOFF seconds doubled between
them, LS_TIMEOUT seconds per request). There is no command-line or environment knob for it, so the in-process
tests shorten it with monkeypatch; the closed-port test runs the real command with the real defaults.
"""

from __future__ import annotations

import time

import pytest

from studio import provision
from tests.test_reliability_support import (
    FakeLabelStudio,
    assert_one_error_line,
    run_cli_in_process,
    run_workbench,
)
from workbench.services import free_port

ATTEMPTS, BACKOFF, TIMEOUT = 3, 0.1, 0.5


@pytest.fixture
def quick_retries(monkeypatch):
    monkeypatch.setattr(provision, "LS_ATTEMPTS", ATTEMPTS)
    monkeypatch.setattr(provision, "LS_BACKOFF", BACKOFF)
    monkeypatch.setattr(provision, "LS_TIMEOUT", TIMEOUT)


def test_label_studio_down_real_command(tmp_path):
    """The real `workbench train` against a closed port: 4 tries (waits 1 + 2 + 4 s), then one line, exit 1."""
    models = tmp_path / "models"
    closed = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    done = run_workbench("train", "--ls-url", closed, "--project", "1", "--api-key", "k", "--models", str(models))
    elapsed = time.monotonic() - started
    assert done.returncode == 1, done.stdout + done.stderr
    assert_one_error_line(done.stderr, "could not connect to Label Studio", closed, "(after 4 attempts)")
    assert elapsed >= 7, "no backoff between the attempts"
    assert not models.exists()


@pytest.mark.parametrize(
    ("route", "mode", "message"),
    [
        ("whoami", "slow", "ReadTimeout"),
        ("whoami", "503", "HTTP 503"),
        ("export", "slow", "ReadTimeout"),
        ("export", "503", "HTTP 503"),
    ],
)
@pytest.mark.usefixtures("quick_retries")
def test_slow_or_failing_label_studio_train(route, mode, message, tmp_path, monkeypatch, capsys):
    models = tmp_path / "models"
    with FakeLabelStudio(slow_seconds=TIMEOUT * 4) as fake:
        fake.modes[route] = mode
        started = time.monotonic()
        args = ["train", "--ls-url", fake.url, "--project", "1", "--api-key", "k", "--models", str(models)]
        code, _, err = run_cli_in_process(monkeypatch, capsys, *args)
        elapsed = time.monotonic() - started
        hits = fake.hits(route)
    assert code == 1
    doing = "connect to Label Studio" if route == "whoami" else "export project 1"
    assert_one_error_line(err, f"could not {doing}", message, f"(after {ATTEMPTS} attempts)")
    assert len(hits) == ATTEMPTS, f"{len(hits)} requests to {route}: the retries are not bounded as configured"
    per_try = TIMEOUT if mode == "slow" else 0.0
    gaps = [later - earlier for earlier, later in zip(hits, hits[1:], strict=False)]
    for number, gap in enumerate(gaps):  # waits of BACKOFF, 2x BACKOFF, ... between the tries
        assert gap >= per_try + BACKOFF * 2**number * 0.9, gaps
    assert elapsed < 15
    assert not models.exists(), "something was written in the models folder"


@pytest.mark.usefixtures("quick_retries")
def test_wrong_api_key_is_not_retried(tmp_path, monkeypatch, capsys):
    with FakeLabelStudio() as fake:
        fake.modes["whoami"] = "401"
        models = tmp_path / "models"
        args = ["train", "--ls-url", fake.url, "--project", "1", "--api-key", "wrong", "--models", str(models)]
        code, _, err = run_cli_in_process(monkeypatch, capsys, *args)
        assert len(fake.hits("whoami")) == 1
    assert code == 1 and not models.exists()
    assert_one_error_line(err, "rejected the API key", "(after 1 attempt)")


@pytest.mark.usefixtures("quick_retries")
def test_export_command_with_failing_label_studio_writes_nothing(tmp_path, monkeypatch, capsys):
    out = tmp_path / "dataset"
    with FakeLabelStudio() as fake:
        fake.modes["export"] = "503"
        code, _, err = run_cli_in_process(
            monkeypatch, capsys, "export", "--ls-url", fake.url, "--project", "1", "--api-key", "k", "--out", str(out)
        )
        assert len(fake.hits("export")) == ATTEMPTS
    assert code == 1
    assert_one_error_line(err, "could not export project 1", "HTTP 503", f"(after {ATTEMPTS} attempts)")
    assert not out.exists()
