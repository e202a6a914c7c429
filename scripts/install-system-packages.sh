#!/usr/bin/env bash
# Debian packages the browser tests need (headless Chromium and its driver). Idempotent; needs root or sudo.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then exit 0; fi
sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
$sudo apt-get update -q
$sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver
