#!/usr/bin/env bash
# Installs what the browser and TypeScript-client tests need: the npm packages in
# package-lock.json (`npm ci`: exactly the locked versions, playwright-core among them)
# and Debian's Chromium, which playwright-core drives (it never downloads a browser of its
# own). Building or running the server needs none of this. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "installing nodejs and npm"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq nodejs npm
fi

if [ ! -x /usr/bin/chromium ]; then
    echo "installing chromium"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium
fi

# node_modules is rebuilt only when the lock changes.
stamp=node_modules/.package-lock.sha256
want="$(sha256sum package-lock.json | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "installing npm packages (npm ci)"
    npm ci --no-audit --no-fund
    echo "$want" >"$stamp"
fi
