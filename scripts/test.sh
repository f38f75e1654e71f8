#!/usr/bin/env bash
# The whole test suite: formatting, lints, then every unit and integration test.
# Tests talk to real services over real connections; see README "Testing".
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked --all-targets
