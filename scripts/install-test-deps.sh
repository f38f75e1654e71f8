#!/usr/bin/env bash
# Installs what the test suite talks to besides the machine's PostgreSQL and Redis:
# moto's S3 server (PyPI) and, if missing, the Debian packages for redis-server and the
# PostgreSQL server binaries (private instances for the outage tests). Idempotent.
set -euo pipefail

if ! python3 -c 'import moto.server, flask' >/dev/null 2>&1; then
    echo "installing moto[server] (S3-compatible test server)"
    python3 -m pip install --quiet --disable-pip-version-check 'moto[server]>=5,<6'
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
