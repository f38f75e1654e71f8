#!/usr/bin/env bash
# The whole test suite: formatting, lints, then every unit and integration test.
# Tests talk to real services over real connections: the machine's PostgreSQL
# (127.0.0.1:5432, trust; override with SDQ_TEST_POSTGRES_URL), private redis-server and
# PostgreSQL instances they start themselves, moto's S3 server, and Debian's Chromium for
# the browser UI.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-test-deps.sh
# First, because the binary embeds it: the committed UI build must be what its sources give.
./scripts/test-web.sh build
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked --all-targets
cargo build --locked
./scripts/test-web.sh test
