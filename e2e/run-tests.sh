#!/usr/bin/env bash
# Builds what the end-to-end tests need (build.sh) and runs them.
# Extra arguments go to `cargo nextest run`, e.g. `e2e/run-tests.sh -E "binary(messaging)"`.
set -euo pipefail
# Say which command failed: `set -e` alone ends the script without a word.
trap 'rc=$?; echo "$(basename "$0"): failed (exit $rc) at line $LINENO: $BASH_COMMAND" >&2' ERR

e2e="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$e2e/build.sh"
# The wash test runs `wash build` (`cargo build --release`) in a copy of the
# repository, with this target dir: built here first, that build compiles
# only the provider crate itself inside the test, not its dependencies.
(cd "$e2e/.." && cargo build --locked --release)
# wadm needs nats-server 2.10 or later, and the wash tests run wash:
# scripts/tools installs both when missing (scripts/test sets them already).
NATS_SERVER_BIN="${NATS_SERVER_BIN:-$("$e2e/../scripts/tools" nats-server)}"
WASH_BIN="${WASH_BIN:-$("$e2e/../scripts/tools" wash)}"
export NATS_SERVER_BIN WASH_BIN
cd "$e2e"
# A fresh temp dir per run: the host caches provider executables there.
TMPDIR="$(mktemp -d -t messaging-nats-e2e.XXXXXX)"
export TMPDIR
trap 'rm -rf "$TMPDIR"' EXIT
# Built as e2e/build.sh built it (linted with E2E_CLIPPY=1), so nothing is
# compiled again.
${E2E_CLIPPY:+"$e2e/../scripts/with-clippy"} cargo nextest run --release --no-fail-fast "$@"
