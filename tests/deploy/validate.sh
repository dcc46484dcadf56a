#!/usr/bin/env bash
# Offline checks of the deploy files, as far as they go without a cluster or an init system
# (compose.sh brings the compose file up for real). About 15 s once the tools are installed.
#  - systemd: `systemd-analyze verify` of every unit (the template as an instance), with the
#    binary path pointed at GOCHAT (the suite's build), silent or failed; each unit reloads with
#    SIGHUP. 99-gochat.conf: every key exists on this kernel (or is marked optional), and the
#    network ones are written in a network namespace of their own, so the kernel parses them.
#  - Kubernetes: `kubectl kustomize` of the base and each overlay, every resource validated
#    against the Kubernetes schemas of 1.29 and 1.37 (kubernetes-validate --strict), then
#    validate.py: probes, metrics, ids, seccomp, a config change rolling its pods, `images:`,
#    the ingress routes and policy.
#  - compose: `docker compose config` (the compose specification's schema), then validate.py.
#
# usage: tests/deploy/validate.sh [GOCHAT]   (default target/debug/gochat)
set -euo pipefail
cd "$(dirname "$0")/../.."
start=$SECONDS
gochat=$(realpath "${1:-target/debug/gochat}")
tools=$(tests/deploy/tools.sh)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# systemd units.
for unit in deploy/systemd/*.service; do
    name=$(basename "$unit")
    grep -qx 'ExecReload=/bin/kill -HUP $MAINPID' "$unit" || { echo "FAILED: $name has no SIGHUP reload" >&2; exit 1; }
    [ "$name" = gochat-gateway@.service ] && name="gochat-gateway@1.service"
    sed "s#/usr/local/bin/gochat#$gochat#g" "$unit" > "$tmp/$name"
    if ! out=$(cd "$tmp" && systemd-analyze verify "./$name" 2>&1) || [ -n "$out" ]; then
        echo "FAILED: systemd-analyze verify $unit: $out" >&2
        exit 1
    fi
done
grep -q '^net.ipv4.ip_local_reserved_ports = ' deploy/systemd/99-gochat.conf \
    || { echo "FAILED: 99-gochat.conf reserves no ports" >&2; exit 1; }
command -v unshare >/dev/null && command -v sysctl >/dev/null
while IFS= read -r line; do
    line=${line%%#*}
    [[ "$line" =~ ^[[:space:]]*(-?)([a-z0-9_.]+)[[:space:]]*=[[:space:]]*(.*[^[:space:]])[[:space:]]*$ ]] || continue
    optional=${BASH_REMATCH[1]} key=${BASH_REMATCH[2]} value=${BASH_REMATCH[3]}
    file=/proc/sys/${key//.//}
    if [ ! -e "$file" ]; then
        [ -n "$optional" ] && continue
        echo "FAILED: 99-gochat.conf: $key is not a setting of this kernel" >&2
        exit 1
    fi
    if [[ "$key" == net.* ]] && unshare --net test -w "$file" 2>/dev/null; then
        unshare --net sysctl -q -w "$key=$value" >/dev/null \
            || { echo "FAILED: 99-gochat.conf: the kernel refuses $key = $value" >&2; exit 1; }
    fi
done < deploy/systemd/99-gochat.conf
echo "systemd: units verified, sysctl settings accepted"

# Kubernetes.
k8s=deploy/k8s
"$tools/kubectl" kustomize "$k8s/base" > "$tmp/base.yaml"
"$tools/kubectl" kustomize "$k8s/overlays/io_uring" > "$tmp/io_uring.yaml"
"$tools/kubectl" kustomize "$k8s/overlays/ingress" > "$tmp/ingress.yaml"
# A changed gateway.toml, and the image set in an overlay, as an operator would.
cp -r "$k8s/base" "$tmp/changed"
echo 'max_rooms_per_conn = 8' >> "$tmp/changed/gateway.toml"
"$tools/kubectl" kustomize "$tmp/changed" > "$tmp/changed.yaml"
mkdir "$tmp/retagged"
cat > "$tmp/retagged/kustomization.yaml" <<YAML
resources: [$(realpath --relative-to="$tmp/retagged" "$k8s/base")]
images: [{ name: gochat-rs, newName: registry.example.com/gochat-rs, newTag: "1.2.3" }]
YAML
"$tools/kubectl" kustomize "$tmp/retagged" > "$tmp/retagged.yaml"
for version in 1.29.0 1.37.0; do
    "$tools/kubernetes-validate" --strict --quiet -k "$version" "$tmp"/{base,io_uring,ingress}.yaml \
        || { echo "FAILED: the manifests against Kubernetes $version's schemas" >&2; exit 1; }
done
"$tools/python" tests/deploy/validate.py k8s "$tmp"/{base,io_uring,ingress,changed,retagged}.yaml

# compose.
"$tools/docker-compose" -f deploy/docker/compose.yml config --quiet
"$tools/docker-compose" -f deploy/docker/compose.yml config --format json > "$tmp/compose.json"
"$tools/python" tests/deploy/validate.py compose "$tmp/compose.json" deploy/docker/prometheus.yml \
    deploy/docker/grafana/datasources.yml
echo "validate.sh: ok in $((SECONDS - start)) s"
