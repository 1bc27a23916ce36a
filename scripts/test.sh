#!/usr/bin/env bash
# Builds every binary (the end-to-end tests run criu, criu-helper and
# criu-workload from the target directory), then runs every test.
# Extra arguments go to `cargo test`, e.g. ./scripts/test.sh -- --nocapture
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --bins
exec cargo test --workspace "$@"
