#!/usr/bin/env bash
# The whole test suite: formatting, lints, the API docs, the fuzz targets' build, unit,
# property, interop and end-to-end tests.
# Run as root: the end-to-end tests build network namespaces (and remove them).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

start=$(date +%s)
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
# fuzz/ is a workspace of its own (cargo-fuzz builds it with its own flags); checking it on
# stable keeps the targets compiling against the parsers' API.
cargo check --manifest-path fuzz/Cargo.toml --locked
cargo test --workspace --locked
echo "test.sh: all green in $(( $(date +%s) - start )) s"
