#!/usr/bin/env bash
# Debian packages `make test` needs: headless Chromium and its driver (browser tests) and shellcheck (`make lint`).
# Idempotent: does nothing when every command is already there. Needs root, or sudo for another user.
set -euo pipefail
packages=(chromium chromium-driver shellcheck)
missing=()
for tool in chromium chromedriver shellcheck; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ "${#missing[@]}" -eq 0 ]; then exit 0; fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-system-packages.sh: ${missing[*]} missing and no apt-get; install ${packages[*]} with your package manager" >&2
  exit 1
fi
# `env VAR=value cmd` rather than a bare `VAR=value cmd` after the prefix: with an empty prefix bash would take the
# assignment for a command name, and sudo drops the caller's environment anyway.
if [ "$(id -u)" -eq 0 ]; then
  as_root=(env)
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo env)
else
  echo "install-system-packages.sh: ${missing[*]} missing; run as root or install sudo (packages: ${packages[*]})" >&2
  exit 1
fi
echo "install-system-packages.sh: ${missing[*]} missing; installing ${packages[*]}"
"${as_root[@]}" DEBIAN_FRONTEND=noninteractive apt-get update -q
"${as_root[@]}" DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${packages[@]}"
