#!/usr/bin/env bash
# Installs what the test suite talks to besides the machine's PostgreSQL and Redis:
# a private Python virtualenv (target/test-venv) with the packages in
# scripts/test-requirements.txt (moto's S3 server and the real client libraries the
# compatibility tests drive), and, if missing, the Debian packages for redis-server and
# the PostgreSQL server binaries (private instances for the outage tests). Idempotent:
# the venv is rebuilt only when the requirements file changes.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${SDQ_TEST_VENV:-target/test-venv}"
requirements=scripts/test-requirements.txt
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "installing Python test packages into $venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
    echo "$want" >"$stamp"
fi

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    need_apt+=(postgresql)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "installing ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_apt[@]}"
fi
