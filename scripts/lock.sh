#!/usr/bin/env bash
# Refresh the lock files that `make install` installs from, with a sha256 for every file (`make lock` runs this):
#   requirements.lock              this project with its `test` extra (.venv)
#   scripts/label-studio.lock      Label Studio 1.23.2 under scripts/label-studio-constraints.txt (.venv-ls)
# Both are resolved for CPython 3.11 on Linux x86_64 (glibc 2.28 or newer), the machines this project runs on.
#
# torch is the local CPU wheel in /opt/wheels (the file `pip install torch==2.13.0` takes here): the lock pins it with
# that file's hash, and its metadata, unlike PyPI's torch 2.13.0, names no nvidia-* package. A machine without that
# file stops at torch with a hash error instead of downloading GBs of CUDA builds.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.10
TOOLS=.venv-lock
WHEELS=${TORCH_WHEELS:-/opt/wheels}
PYTHON=${PYTHON:-python3}

compgen -G "$WHEELS/torch-2.13.0+cpu-*.whl" >/dev/null || {
	echo "lock: no torch-2.13.0+cpu wheel in $WHEELS (set TORCH_WHEELS to its folder)" >&2
	exit 1
}
if [ ! -x "$TOOLS/bin/uv" ] || [ "$("$TOOLS/bin/uv" --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
	"$PYTHON" -m venv "$TOOLS"
	"$TOOLS/bin/pip" install -q "uv==$UV_VERSION"
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# uv reads neither pip's configuration nor its local mirrors: only the package index and the torch wheel's folder, so
# the hashes are the index's own, which the mirrors' copies match (a fresh machine's pip may take either).
# The extra requirement on standard input ("-") is read after the named file.
compile() {
	"$TOOLS/bin/uv" pip compile --quiet --generate-hashes --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --no-header "$@"
}

{
	echo "# Installed by \`make install\` into .venv (torch first), then the project with --no-deps. Refresh: make lock."
	echo "# This project and its test extra, for CPython 3.11 on Linux x86_64; torch is the local CPU wheel."
	echo "torch==2.13.0+cpu" | compile pyproject.toml - --extra test --find-links "$WHEELS" --no-emit-find-links
} >"$tmp/requirements.lock"
{
	echo "# Installed by \`make install\` into .venv-ls. Refresh: make lock."
	echo "# Label Studio 1.23.2 with scripts/label-studio-constraints.txt, for CPython 3.11 on Linux x86_64."
	echo "label-studio==1.23.2" | compile - -c scripts/label-studio-constraints.txt
} >"$tmp/label-studio.lock"

if grep -qiE '^(nvidia-|triton==)' "$tmp/requirements.lock"; then
	echo "lock: a CUDA package got into the lock; torch must be the local CPU wheel" >&2
	exit 1
fi
mv "$tmp/requirements.lock" requirements.lock
mv "$tmp/label-studio.lock" scripts/label-studio.lock
echo "lock: wrote requirements.lock ($(grep -c '^[a-z0-9]' requirements.lock) packages)" \
	"and scripts/label-studio.lock ($(grep -c '^[a-z0-9]' scripts/label-studio.lock) packages)"
