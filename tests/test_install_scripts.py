"""`scripts/install-system-packages.sh`, `make lint`'s list of shell scripts and `make install`'s Label Studio
step, without touching the system.

The script runs with a PATH of stubs only: `apt-get`, `sudo` and `id` log their argv to a file (no real apt-get runs),
and the one real tool the script needs, `env`, is a symlink in a folder of its own. So a real /usr/bin/chromium on
this machine is not found, as on a fresh one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "install-system-packages.sh"
BASH = shutil.which("bash") or "/bin/bash"
PACKAGES = ["chromium", "chromium-driver", "shellcheck"]

# Each stub logs "name<TAB>DEBIAN_FRONTEND as it sees it<TAB>args" on one line.
LOG_LINE = 'printf "%s\\t%s\\t%s\\n" "{name}" "${{DEBIAN_FRONTEND:-}}" "$*" >> "$STUB_LOG"'
STUBS = {
    "apt-get": LOG_LINE.format(name="apt-get"),
    # Like sudo's env_reset: the command runs with a clean environment, so variables must be passed explicitly.
    "sudo": LOG_LINE.format(name="sudo") + '\nexec env -i PATH="$PATH" STUB_LOG="$STUB_LOG" "$@"',
    "id": '[ "${1:-}" = "-u" ] && echo "$STUB_UID"',
}


def _executable(path: Path, body: str) -> None:
    path.write_text(f"#!{BASH}\n{body}\n", encoding="utf-8")
    path.chmod(0o755)


def run_script(tmp_path: Path, *, uid: int, stubs: tuple[str, ...] = ("apt-get", "sudo", "id"), present=()):
    """Run the script with only the stubs (and `present`: fake installed commands) on PATH; return it and the log."""
    stub_dir, tools = tmp_path / "stubs", tmp_path / "tools"
    stub_dir.mkdir()
    tools.mkdir()
    for name in stubs:
        _executable(stub_dir / name, STUBS[name])
    for name in present:
        _executable(stub_dir / name, "exit 0")
    env_tool = shutil.which("env")
    assert env_tool, "the tests need env(1)"
    (tools / "env").symlink_to(env_tool)
    log = tmp_path / "calls.log"
    log.touch()
    environment = {"PATH": f"{stub_dir}{os.pathsep}{tools}", "STUB_LOG": str(log), "STUB_UID": str(uid)}
    done = subprocess.run(
        [BASH, str(SCRIPT)], capture_output=True, text=True, env=environment, timeout=60, cwd=tmp_path
    )
    calls = [line.split("\t") for line in log.read_text(encoding="utf-8").splitlines()]
    return done, calls


def test_as_root_it_installs_with_apt_get_and_never_sudo(tmp_path: Path):
    done, calls = run_script(tmp_path, uid=0)
    assert done.returncode == 0, done.stderr
    assert calls == [
        ["apt-get", "noninteractive", "update -q"],
        ["apt-get", "noninteractive", "install -y -q " + " ".join(PACKAGES)],
    ]


def test_as_another_user_it_goes_through_sudo(tmp_path: Path):
    done, calls = run_script(tmp_path, uid=1000)
    assert done.returncode == 0, done.stderr
    assert calls == [
        ["sudo", "", "env DEBIAN_FRONTEND=noninteractive apt-get update -q"],
        ["apt-get", "noninteractive", "update -q"],
        ["sudo", "", "env DEBIAN_FRONTEND=noninteractive apt-get install -y -q " + " ".join(PACKAGES)],
        ["apt-get", "noninteractive", "install -y -q " + " ".join(PACKAGES)],
    ]


def test_nothing_is_installed_when_every_command_is_there(tmp_path: Path):
    done, calls = run_script(tmp_path, uid=1000, present=("chromium", "chromedriver", "shellcheck"))
    assert (done.returncode, calls, done.stdout, done.stderr) == (0, [], "", "")


def test_one_missing_command_is_enough_to_install(tmp_path: Path):
    done, calls = run_script(tmp_path, uid=0, present=("chromium", "chromedriver"))
    assert done.returncode == 0 and "shellcheck missing" in done.stdout
    assert [call[0] for call in calls] == ["apt-get", "apt-get"]


@pytest.mark.parametrize(
    ("stubs", "message"),
    [(("apt-get", "id"), "run as root or install sudo"), (("sudo", "id"), "no apt-get")],
)
def test_without_sudo_or_apt_get_it_stops_with_one_line(tmp_path: Path, stubs, message):
    done, calls = run_script(tmp_path, uid=1000, stubs=stubs)
    assert done.returncode == 1 and calls == []
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(not (shutil.which("make") and shutil.which("git")), reason="needs make and git")
def test_make_lint_finds_every_shell_script_including_new_ones(tmp_path: Path):
    repo = tmp_path / "repo"
    (repo / "tools").mkdir(parents=True)
    shutil.copy(ROOT / "Makefile", repo / "Makefile")
    scripts = {
        "a.sh": "echo a",
        "tools/run": "#!/usr/bin/env bash\necho b",
        "tools/posix": "#!/bin/sh\necho c",
        "tools/tool.py": "#!/usr/bin/env python3\nprint('d')",
        "notes.txt": "bash is mentioned here",
    }
    for name, text in scripts.items():
        (repo / name).write_text(text + "\n", encoding="utf-8")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "add", "."], check=True)
    (repo / "untracked.sh").write_text("echo e\n", encoding="utf-8")
    done = subprocess.run(["make", "-s", "shell-scripts"], cwd=repo, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.split()) == ["a.sh", "tools/posix", "tools/run"]


@pytest.mark.skipif(not shutil.which("shellcheck"), reason="shellcheck is not installed")
def test_every_shell_script_of_the_repository_passes_shellcheck():
    listed = subprocess.run(["make", "-s", "shell-scripts"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    files = listed.stdout.split()
    assert {"scripts/install-system-packages.sh", ".ci/run"} <= set(files)
    done = subprocess.run(["shellcheck", *files], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout


def test_make_install_gives_label_studio_its_constraints_and_reinstalls_when_they_change(tmp_path: Path):
    """`make` with a stub python3 whose venv's pip logs its argv: no package is installed."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "Makefile", repo / "Makefile")
    constraints = ROOT / "scripts" / "label-studio-constraints.txt"
    shutil.copy(constraints, repo / "scripts" / constraints.name)
    log = tmp_path / "pip.log"
    pip, python = tmp_path / "pip", tmp_path / "python3"
    _executable(pip, f'echo "$*" >> "{log}"')
    _executable(python, f'[ "$1 $2" = "-m venv" ] || exit 9\nmkdir -p "$3/bin" && cp "{pip}" "$3/bin/pip"')  # the venv

    def install() -> subprocess.CompletedProcess:
        command = ["make", "-s", f"PYTHON={python}", ".venv-ls/.installed"]
        return subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=60)

    done = install()
    assert done.returncode == 0, done.stderr
    assert log.read_text().splitlines() == [f"install -q -c scripts/{constraints.name} label-studio==1.23.2"]
    pinned = [line for line in constraints.read_text().splitlines() if line and not line.startswith("#")]
    assert "sentry-sdk<3" in pinned  # 3.0 stops Label Studio 1.23.2 at start-up
    assert install().returncode == 0 and len(log.read_text().splitlines()) == 1  # installed: nothing to do
    os.utime(repo / "scripts" / constraints.name, (time.time() + 5, time.time() + 5))
    assert install().returncode == 0 and len(log.read_text().splitlines()) == 2  # changed constraints: again
