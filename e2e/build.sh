#!/usr/bin/env bash
# Builds everything the end-to-end tests and the demo run: installs what is
# missing (nats-server, the wasm32-wasip2 target), patches the host crate
# (prepare-host.sh), then builds the provider archive for every target
# (scripts/package; `e2e/build.sh --native` builds only this machine's), the
# echo component and the e2e crate, all in release mode, and leaves the
# artifacts wadm.yaml deploys in build/ (messaging-nats.par.gz,
# echo_component.wasm). Honours CARGO_TARGET_DIR.
set -euo pipefail
# Say which command failed: `set -e` alone ends the script without a word.
trap 'rc=$?; echo "$(basename "$0"): failed (exit $rc) at line $LINENO: $BASH_COMMAND" >&2' ERR

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
e2e="$repo/e2e"
start=$SECONDS

step() { printf '\n==> [%4ds] %s\n' "$((SECONDS - start))" "$*"; }

if ! command -v nats-server >/dev/null 2>&1; then
    step "installing nats-server (apt)"
    if ! apt-get install -y nats-server; then
        apt-get update
        apt-get install -y nats-server
    fi
fi

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    step "adding rust target wasm32-wasip2"
    rustup target add wasm32-wasip2
fi

step "preparing the wasmcloud-host crate"
"$e2e/prepare-host.sh"

targets="every target"
[[ " $* " == *" --native "* ]] && targets="this machine's target"
step "building the provider archive for $targets (scripts/package $*)"
# Signed with the keys in $WASH_KEYS or ~/.wash/keys (made on first use).
"$repo/scripts/package" "$@"

step "building the echo component (wasm32-wasip2)"
cargo build --release --target wasm32-wasip2 \
    --manifest-path "$repo/examples/echo-component/Cargo.toml"

step "building the e2e crate with the embedded host (first build: 10-20 min on 2 cores)"
# From inside e2e/ so that cargo reads the patch in e2e/.cargo/config.toml.
# With E2E_CLIPPY=1 (scripts/test sets it), clippy lints the crate as it
# compiles (scripts/with-clippy); e2e/run-tests.sh builds the same way.
(cd "$e2e" && ${E2E_CLIPPY:+"$repo/scripts/with-clippy"} cargo build --release --bins --tests)

step "copying build/echo_component.wasm"
mkdir -p "$repo/build"
component_target="${CARGO_TARGET_DIR:-$repo/examples/echo-component/target}"
cp "$component_target/wasm32-wasip2/release/echo_component.wasm" "$repo/build/echo_component.wasm"

step "built everything"
