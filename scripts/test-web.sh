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
    npm run build
    if [ -n "$(git status --porcelain -- web/dist)" ]; then
        echo "web/dist differs from the committed build; run \`npm ci && npm run build\` and commit web/dist:" >&2
        git status --short -- web/dist >&2
        git --no-pager diff --stat -- web/dist >&2
        exit 1
    fi
fi

if [ "$step" = all ] || [ "$step" = test ]; then
    export SDQ_BIN="${SDQ_BIN:-$PWD/target/debug/sdq}"
    [ -x "$SDQ_BIN" ] || cargo build --locked
    npm test
fi
