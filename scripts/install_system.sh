#!/usr/bin/env bash
# System parts the deploy verbs drive (idempotent; safe to re-run):
#   nginx from Debian (apt-get) if missing; pm2 from npm into .ftctl/node (project-local,
#   no global state: ftctl and the tests find it at .ftctl/node/node_modules/.bin/pm2).
set -euo pipefail

PM2_VERSION="${PM2_VERSION:-7.0.4}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX="$ROOT/.ftctl/node"

if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nginx-light \
        || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nginx
    # the Debian package starts a system nginx on :80; ftctl runs its own, so stop that one
    $SUDO systemctl disable --now nginx >/dev/null 2>&1 || $SUDO service nginx stop >/dev/null 2>&1 || true
fi

# headless Chromium + its driver from Debian, for the dashboard's browser test (`ftctl serve`);
# selenium is pointed at these binaries, so nothing downloads a browser of its own
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver
fi

installed="$(node -p "require('$PREFIX/node_modules/pm2/package.json').version" 2>/dev/null || true)"
if [ "$installed" != "$PM2_VERSION" ]; then
    mkdir -p "$PREFIX"
    npm install --silent --no-audit --no-fund --prefix "$PREFIX" "pm2@$PM2_VERSION"
fi

echo "nginx: $(command -v nginx || echo /usr/sbin/nginx)"
echo "chromium: $(command -v chromium) ($(command -v chromedriver))"
echo "pm2:   $PREFIX/node_modules/.bin/pm2 ($PM2_VERSION)"
