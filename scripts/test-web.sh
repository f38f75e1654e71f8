#!/usr/bin/env bash
# The browser UI and the TypeScript client: rebuild web/dist with the locked npm packages
# and fail if it differs from what is committed (the binary embeds the committed files),
# then run the client's tests and the Chromium tests against a real `sdq serve`.
#   scripts/test-web.sh build   only the rebuild-and-compare step
#   scripts/test-web.sh test    only the tests (needs target/debug/sdq)
set -euo pipefail
cd "$(dirname "$0")/.."
step="${1:-all}"

./scripts/install-web-test-deps.sh

if [ "$step" = all ] || [ "$step" = build ]; then
    # The client's types are generated from its copy of the OpenAPI document (which
    # tests/openapi.rs keeps equal to the server's) and checked against the hand-written
    # ones at compile time (clients/typescript/src/openapi-check.ts).
    npm run gen:openapi
    npm run build
    generated="web/dist clients/typescript/src/openapi.gen.ts"
    if [ -n "$(git status --porcelain -- $generated)" ]; then
        echo "generated files differ from the committed ones; run \`npm ci && npm run gen:openapi && npm run build\` and commit them:" >&2
        git status --short -- $generated >&2
        git --no-pager diff --stat -- $generated >&2
        exit 1
    fi
fi

if [ "$step" = all ] || [ "$step" = test ]; then
    export SDQ_BIN="${SDQ_BIN:-$PWD/target/debug/sdq}"
    [ -x "$SDQ_BIN" ] || cargo build --locked
    npm test
fi
