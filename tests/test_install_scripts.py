"""`scripts/install-system-packages.sh`, `make lint`'s list of shell scripts, `make install`'s two environments and
the lock files they install from, without touching the system.

The script runs with a PATH of stubs only: `apt-get`, `sudo` and `id` log their argv to a file (no real apt-get runs),
and the one real tool the script needs, `env`, is a symlink in a folder of its own. So a real /usr/bin/chromium on
this machine is not found, as on a fresh one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "install-system-packages.sh"
BASH = shutil.which("bash") or "/bin/bash"
PACKAGES = ["chromium", "chromium-driver", "shellcheck"]
LOCK = ROOT / "requirements.lock"
LS_LOCK = ROOT / "scripts" / "label-studio.lock"
LS_CONSTRAINTS = ROOT / "scripts" / "label-studio-constraints.txt"
TORCH_WHEEL = Path("/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl")

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


class StubInstall:
    """`make TARGET` in a copy of the repository's install files, with a stub python3 whose venv's pip logs its argv
    (one line a call): no package is installed."""

    def __init__(self, tmp_path: Path, files: tuple[Path, ...]):
        self.repo = tmp_path / "repo"
        (self.repo / "scripts").mkdir(parents=True)
        for path in (ROOT / "Makefile", *files):
            shutil.copy(path, self.repo / path.relative_to(ROOT))
        self.log = tmp_path / "pip.log"
        pip, self.python = tmp_path / "pip", tmp_path / "python3"
        _executable(pip, f'echo "$*" >> "{self.log}"')
        _executable(self.python, f'[ "$1 $2" = "-m venv" ] || exit 9\nmkdir -p "$3/bin" && cp "{pip}" "$3/bin/pip"')

    def make(self, target: str) -> subprocess.CompletedProcess:
        command = ["make", "-s", f"PYTHON={self.python}", target]
        return subprocess.run(command, cwd=self.repo, capture_output=True, text=True, timeout=60)

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def touch(self, name: str) -> None:
        later = time.time() + 5
        os.utime(self.repo / name, (later, later))


def read_lock(path: Path) -> dict[str, tuple[str, list[str]]]:
    """{canonical name: (version, [sha256, ...])} of a `--generate-hashes` requirements file."""
    pins: dict[str, tuple[str, list[str]]] = {}
    text = path.read_text(encoding="utf-8").replace("\\\n", " ")
    for line in text.split("\n"):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement, *options = line.split()
        name, _, version = requirement.partition("==")
        assert version, f"{path.name}: not pinned with ==: {line}"
        hashes = [option.removeprefix("--hash=sha256:") for option in options if option.startswith("--hash=sha256:")]
        assert len(hashes) == len(options), f"{path.name}: options other than --hash: {line}"
        pins[canonicalize_name(name.split("[")[0])] = (version, hashes)
    return pins


@pytest.mark.skipif(not shutil.which("make"), reason="needs make")
def test_make_install_takes_torch_then_the_lock_with_hashes_and_reinstalls_when_either_changes(tmp_path: Path):
    stub = StubInstall(tmp_path, (ROOT / "pyproject.toml", LOCK))
    done = stub.make(".venv/.installed")
    assert done.returncode == 0, done.stderr
    assert stub.calls() == [
        "install -q --require-hashes --no-deps -r .venv/torch.lock",  # torch first, alone
        "install -q --require-hashes -r requirements.lock",
        "install -q --no-deps --no-build-isolation -e .",
        "check",
    ]
    torch_lock = read_lock(stub.repo / ".venv" / "torch.lock")
    assert list(torch_lock) == ["torch"] and torch_lock["torch"] == read_lock(LOCK)["torch"]
    assert stub.make(".venv/.installed").returncode == 0 and len(stub.calls()) == 4  # installed: nothing to do
    stub.touch("requirements.lock")
    assert stub.make(".venv/.installed").returncode == 0 and len(stub.calls()) == 8  # a new lock: again
    stub.touch("pyproject.toml")
    assert stub.make(".venv/.installed").returncode == 0 and len(stub.calls()) == 12


@pytest.mark.skipif(not shutil.which("make"), reason="needs make")
def test_make_install_gives_label_studio_its_lock_and_reinstalls_when_it_changes(tmp_path: Path):
    stub = StubInstall(tmp_path, (LS_LOCK,))
    done = stub.make(".venv-ls/.installed")
    assert done.returncode == 0, done.stderr
    assert stub.calls() == ["install -q --require-hashes -r scripts/label-studio.lock"]
    assert stub.make(".venv-ls/.installed").returncode == 0 and len(stub.calls()) == 1  # installed: nothing to do
    stub.touch("scripts/label-studio.lock")
    assert stub.make(".venv-ls/.installed").returncode == 0 and len(stub.calls()) == 2  # a new lock: again


def test_the_lock_pins_every_package_with_hashes_and_torch_to_the_local_cpu_wheel():
    pins = read_lock(LOCK)
    assert all(hashes for _, hashes in pins.values())
    version, hashes = pins["torch"]
    assert version == "2.13.0+cpu" and len(hashes) == 1  # the CPU wheel only: PyPI's 2.13.0 would pull CUDA
    assert not [name for name in pins if name.startswith("nvidia-") or name == "triton"]
    assert "setuptools" in pins  # the project's own build (--no-build-isolation) uses the locked setuptools
    if TORCH_WHEEL.exists():  # the file `pip install torch==2.13.0` takes on this machine
        assert hashlib.sha256(TORCH_WHEEL.read_bytes()).hexdigest() == hashes[0]


def test_the_lock_satisfies_pyproject_so_it_is_not_stale():
    """Every requirement of pyproject.toml (with the test extra) is in the lock at a version its floor allows."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pins = read_lock(LOCK)
    for spec in [*project["dependencies"], *project["optional-dependencies"]["test"]]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not in requirements.lock: run make lock"
        assert requirement.specifier.contains(pins[name][0], prereleases=True), (spec, pins[name][0])
    floors = {"torch": "2.10", "transformers": "5.3", "jinja2": "3.1.6", "h11": "0.16", "starlette": "1.0.1"}
    for name, floor in floors.items():  # raised above releases with published advisories
        (spec,) = [s for s in project["dependencies"] if canonicalize_name(Requirement(s).name) == name]
        lowest = [Version(s.version) for s in Requirement(spec).specifier if s.operator == ">="]
        assert lowest and lowest[0] >= Version(floor), spec


def test_label_studio_lock_pins_1_23_2_under_its_constraints():
    pins = read_lock(LS_LOCK)
    assert all(hashes for _, hashes in pins.values())
    assert pins["label-studio"][0] == "1.23.2"
    constraints = [line for line in LS_CONSTRAINTS.read_text().splitlines() if line and not line.startswith("#")]
    assert "sentry-sdk<3" in constraints  # 3.0 stops Label Studio 1.23.2 at start-up
    for line in constraints:
        requirement = Requirement(line)
        assert requirement.specifier.contains(pins[canonicalize_name(requirement.name)][0]), line
