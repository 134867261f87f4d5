#!/usr/bin/env bash
# The end-to-end demo behind `make demo` (which installs and builds first).
# It is a Go test so that the harness tears everything down however it ends.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PODWALL_BIN_DIR="${PODWALL_BIN_DIR:-$PWD/bin}"
exec go test -count=1 -v -run '^TestDemo' ./test/demo
