#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit, property, interop and end-to-end tests.
# Run as root: the end-to-end tests build network namespaces (and remove them).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

start=$(date +%s)
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
echo "test.sh: all green in $(( $(date +%s) - start )) s"
