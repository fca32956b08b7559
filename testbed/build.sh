#!/usr/bin/env bash
# Builds the test bed's binaries (etcd, Kubernetes control plane, kubectl, kwok, helm, promtool, and the
# registries and witnesses of the compatibility tests: registry-v3, ggcr-registry, crane, regctl; cosign) from the pinned
# Go modules under testbed/ into .testbed/bin/, plus the KWOK stages config. A module is rebuilt only
# when one of its binaries is missing or its go.mod/go.sum (or the recipe below) changed: a stamp with
# that hash sits next to the binaries. Go's module and build caches stay at their defaults (outside the
# repo), so a fresh clone on the same machine only relinks. See docs/testbed.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TESTBED="$ROOT/testbed"
BIN="${IMAGE_CLONER_TESTBED_BIN:-$ROOT/.testbed/bin}"
STAMPS="$BIN/.stamps"
GO="$(command -v go || echo /usr/local/go/bin/go)"
[[ -x "$GO" ]] || { echo "build.sh: Go not found (need Go >= 1.26 on PATH)" >&2; exit 1; }

export CGO_ENABLED=0 GOFLAGS="${GOFLAGS:--buildvcs=false}"
# Two cores on the reference machine; more parallel compiles only thrash memory there.
JOBS="${TESTBED_BUILD_JOBS:-2}"

mkdir -p "$BIN" "$STAMPS"
# Two `make test` runs at once must not build into the same folder at the same time.
exec 9>"$BIN/.build.lock"
flock 9

log() { printf 'testbed: %s\n' "$*" >&2; }

module_version() { # module dir, module path -> version pinned in that module's go.mod
    (cd "$1" && "$GO" list -m -f '{{.Version}}' "$2")
}

# build MODULE "RECIPE" OUTPUT=PACKAGE...
# RECIPE is hashed with go.mod/go.sum, so changing flags or the package list also triggers a build.
build() {
    local module="$1" recipe="$2"
    shift 2
    local dir="$TESTBED/$module" stamp="$STAMPS/$module" hash missing=0 spec
    hash="$(cat "$dir/go.mod" "$dir/go.sum" <(printf '%s\n' "$recipe" "$@") | sha256sum | cut -d' ' -f1)"
    for spec in "$@"; do [[ -x "$BIN/${spec%%=*}" ]] || missing=1; done
    if [[ $missing == 0 && -f "$stamp" && "$(cat "$stamp")" == "$hash" ]]; then
        return 0
    fi
    rm -f "$stamp"
    local start=$SECONDS
    for spec in "$@"; do
        log "building ${spec%%=*} (${spec#*=})"
        (cd "$dir" && "$GO" build -p "$JOBS" -trimpath -ldflags "$recipe" -o "$BIN/${spec%%=*}" "${spec#*=}")
    done
    echo "$hash" >"$stamp"
    log "$module built in $((SECONDS - start))s"
}

# Ldflags are computed from the pinned versions, which needs `go list` (cheap once the module cache
# is warm), so each recipe is a function called only to compare or build.
k8s_recipe() {
    local v major minor p flags="-s -w"
    v="$(module_version "$TESTBED/k8s" k8s.io/kubernetes)"
    major="${v#v}" && major="${major%%.*}"
    minor="${v#v*.}" && minor="${minor%%.*}"
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        flags+=" -X $p.gitVersion=$v -X $p.gitMajor=$major -X $p.gitMinor=$minor"
        flags+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
    done
    echo "$flags"
}

etcd_recipe() {
    echo "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=$(module_version "$TESTBED/etcd" go.etcd.io/etcd/server/v3)"
}

kwok_recipe() {
    local v
    v="$(module_version "$TESTBED/kwok" sigs.k8s.io/kwok)"
    echo "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${v#v}"
}

helm_recipe() {
    local v kube p flags
    v="$(module_version "$TESTBED/helm" helm.sh/helm/v3)"
    kube="$(module_version "$TESTBED/helm" k8s.io/client-go)" # v0.MINOR.x -> Kubernetes 1.MINOR
    kube="${kube#v0.}" && kube="${kube%%.*}"
    flags="-s -w -X helm.sh/helm/v3/internal/version.version=$v -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
    for p in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
        flags+=" -X $p.k8sVersionMajor=1 -X $p.k8sVersionMinor=$kube"
    done
    echo "$flags"
}

prometheus_recipe() {
    local v minor p=github.com/prometheus/common/version
    v="$(module_version "$TESTBED/prometheus" github.com/prometheus/prometheus)"
    # Prometheus 3.x is published as module v0.3MM.P: v0.316.0 is Prometheus 3.16.0.
    minor="${v#v0.3}" && minor="${minor%%.*}" && minor="$((10#$minor))"
    echo "-s -w -X $p.Version=3.$minor.${v##*.} -X $p.Revision=$v -X $p.Branch=HEAD -X $p.BuildUser=testbed -X $p.BuildDate=19700101-00:00:00"
}

distribution_recipe() {
    local v pkg=github.com/distribution/distribution/v3
    v="$(module_version "$TESTBED/distribution" $pkg)"
    # As upstream's Dockerfile stamps the registry:3 image: `registry --version` prints 3.x.y.
    echo "-s -w -X $pkg/version.version=${v#v} -X $pkg/version.mainpkg=$pkg"
}

ggcr_recipe() {
    echo "-s -w -X github.com/google/go-containerregistry/cmd/crane/cmd.Version=$(module_version "$TESTBED/ggcr" github.com/google/go-containerregistry)"
}

regclient_recipe() {
    echo "-s -w -X github.com/regclient/regclient/internal/version.vcsTag=$(module_version "$TESTBED/regclient" github.com/regclient/regclient)"
}

cosign_recipe() {
    # `cosign version` prints the pinned version (sigs.k8s.io/release-utils reads it from ldflags).
    echo "-s -w -X sigs.k8s.io/release-utils/version.gitVersion=$(module_version "$TESTBED/cosign" github.com/sigstore/cosign/v3)"
}

# KWOK v0.8.0 has no built-in stages: assemble node fast + node heartbeat + pod fast from the
# module's own kustomize/stage/ so they always match the pinned kwok.
kwok_stages() {
    local out="$BIN/kwok-stages.yaml" src f
    src="$(cd "$TESTBED/kwok" && "$GO" mod download -json sigs.k8s.io/kwok | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')"
    [[ -d "$src/kustomize/stage" ]] || { log "kwok module source not found"; return 1; }
    {
        for f in node/fast/node-initialize.yaml node/heartbeat/node-heartbeat.yaml \
            pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
            echo "---"
            echo "# from sigs.k8s.io/kwok kustomize/stage/$f"
            cat "$src/kustomize/stage/$f"
        done
    } >"$out.tmp"
    if cmp -s "$out.tmp" "$out"; then rm "$out.tmp"; else mv "$out.tmp" "$out"; fi
}

total=$SECONDS
build etcd "$(etcd_recipe)" etcd=go.etcd.io/etcd/server/v3
build k8s "$(k8s_recipe)" \
    kube-apiserver=k8s.io/kubernetes/cmd/kube-apiserver \
    kube-controller-manager=k8s.io/kubernetes/cmd/kube-controller-manager \
    kube-scheduler=k8s.io/kubernetes/cmd/kube-scheduler \
    kubectl=k8s.io/kubernetes/cmd/kubectl
build kwok "$(kwok_recipe)" kwok=sigs.k8s.io/kwok/cmd/kwok
build helm "$(helm_recipe)" helm=helm.sh/helm/v3/cmd/helm
# `promtool test rules` / `check rules` for the chart's alerts (tests/unit/test_alert_rules.py).
build prometheus "$(prometheus_recipe)" promtool=github.com/prometheus/prometheus/cmd/promtool
# Registry implementations and witnesses of the registry compatibility tests (docs/testbed.md).
build distribution "$(distribution_recipe)" registry-v3=github.com/distribution/distribution/v3/cmd/registry
build ggcr "$(ggcr_recipe)" crane=github.com/google/go-containerregistry/cmd/crane \
    ggcr-registry=./ggcr-registry
build regclient "$(regclient_recipe)" regctl=github.com/regclient/regclient/cmd/regctl
# The signing tool of the signature-copy tests (docs/testbed.md).
build cosign "$(cosign_recipe)" cosign=github.com/sigstore/cosign/v3/cmd/cosign
kwok_stages
log "binaries up to date in $BIN ($((SECONDS - total))s)"
