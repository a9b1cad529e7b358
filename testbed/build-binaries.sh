#!/usr/bin/env bash
# Builds the real Kubernetes test-bed binaries from the Go module proxy, once, and
# caches them under ~/.cache/prefect-raypool/<component>-<version>/bin/.
# A warm cache makes this a no-op. Prints which binary it builds and how far it is.
# Run through testbed/binaries.py (`make binaries`), the one place naming the versions.
set -euo pipefail

: "${K8S_VERSION:?}" "${ETCD_VERSION:?}" "${KWOK_VERSION:?}" "${KUBERAY_VERSION:?}" \
  "${HELM_VERSION:?}" "${COREDNS_VERSION:?}" "${KUBE_ROUTER_VERSION:?}" "${PREFECT_RAYPOOL_CACHE:?}"
CACHE=$PREFECT_RAYPOOL_CACHE
STAGING_VERSION="v0${K8S_VERSION#v1}" # v1.34.4 -> v0.34.4

export GOFLAGS="${GOFLAGS:-} -trimpath"
export CGO_ENABLED=0

log() { printf '[build-binaries %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# go build -v prints each package as it compiles: turn that into a progress line
# every 25 packages, against the total from `go list -deps`.
progress() {
  local total=$1 name=$2 n=0
  while IFS= read -r _; do
    n=$((n + 1))
    if (( n % 25 == 0 )); then log "  $name: $n/$total packages compiled"; fi
  done
}

# build NAME DIR TARGET PKG...: builds PKG(s) inside module DIR; TARGET is a
# directory (ending in /) for several packages or a file path for one.
build() {
  local name=$1 dir=$2 target=$3; shift 3
  local total start tmp
  total=$(cd "$dir" && go list -deps "$@" | wc -l)
  start=$(date +%s)
  log "building $name ($total packages at most; cached packages are skipped silently)"
  # Build beside the target, then move into place: an interrupted build leaves no
  # half-written binary that a later run would take for cached.
  if [[ $target == */ ]]; then tmp="${target%/}.tmp/"; mkdir -p "$tmp"; else tmp="$target.tmp"; fi
  (cd "$dir" && go build -v ${LDFLAGS:+-ldflags "$LDFLAGS"} -o "$tmp" "$@" 2>&1 >/dev/null) | progress "$total" "$name"
  if [[ $target == */ ]]; then mv "$tmp"* "$target" && rmdir "$tmp"; else mv "$tmp" "$target"; fi
  log "built $name in $(( $(date +%s) - start ))s"
}

# quiet CMD...: run CMD, showing its output only when it fails (go prints every
# module it downloads).
quiet() {
  local out
  out=$("$@" 2>&1) || { printf '%s\n' "$out" >&2; return 1; }
}

need() { # need DIR BIN...: true when any BIN is missing from DIR
  local dir=$1; shift
  for b in "$@"; do [[ -x "$dir/$b" ]] || return 0; done
  return 1
}

kubernetes() {
  local out="$CACHE/kubernetes-$K8S_VERSION/bin"
  # VERSION is written after a build that stamped the version into the binaries
  # (earlier caches lack it and reported v0.0.0, which helm's kubeVersion check refuses).
  if [[ "$(cat "$out/VERSION" 2>/dev/null)" == "$K8S_VERSION" ]] \
    && ! need "$out" kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy; then
    log "kubernetes $K8S_VERSION: cached"; return
  fi
  mkdir -p "$out"
  local mod="$CACHE/src/kubernetes-$K8S_VERSION"
  mkdir -p "$mod"
  # k8s.io/kubernetes replaces its staging modules with relative paths that the
  # module zip does not contain; a wrapper module points each at its release tag.
  local gomod
  gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  {
    echo "module prefect-raypool/testbed/kubernetes"
    echo "go $(go env GOVERSION | sed -E 's/^go([0-9]+\.[0-9]+).*/\1/')"
    echo "require k8s.io/kubernetes $K8S_VERSION"
    grep -oE '^\s*k8s.io/[a-z0-9-]+ => ./staging/src/k8s.io/[a-z0-9-]+' "$gomod" \
      | awk -v v="$STAGING_VERSION" '{print "replace " $1 " => " $1 " " v}'
  } >"$mod/go.mod"
  cat >"$mod/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
)
GO
  log "resolving k8s.io/kubernetes $K8S_VERSION modules"
  (cd "$mod" && quiet go mod tidy)
  # What Kubernetes' own release build stamps (hack/lib/version.sh): servers and
  # kubectl report the real version.
  local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  local x="" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    x+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    x+=" -X $pkg.gitTreeState=clean"
  done
  rm -f "$out/VERSION"
  LDFLAGS="$x" build "kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kubelet, kube-proxy ($K8S_VERSION)" "$mod" "$out/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl \
    k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy
  echo "$K8S_VERSION" >"$out/VERSION"
}

etcd() {
  local out="$CACHE/etcd-$ETCD_VERSION/bin"
  need "$out" etcd || { log "etcd $ETCD_VERSION: cached"; return; }
  mkdir -p "$out"
  local mod="$CACHE/src/etcd-$ETCD_VERSION"
  mkdir -p "$mod"
  # The etcd server module has no main package of its own; etcdmain is the real entry.
  cat >"$mod/main.go" <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  printf 'module prefect-raypool/testbed/etcd\n\ngo %s\n' "$(go env GOVERSION | sed -E 's/^go([0-9]+\.[0-9]+).*/\1/')" >"$mod/go.mod"
  (cd "$mod" && quiet go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" && quiet go mod tidy)
  build "etcd $ETCD_VERSION" "$mod" "$out/etcd" .
}

# install_from_module NAME MODULE VERSION OUTDIR PKG: builds PKG inside the
# downloaded module so its own go.mod and go.sum (and any replaces) apply.
install_from_module() {
  local name=$1 module=$2 version=$3 out=$4 pkg=$5
  need "$out" "$name" || { log "$name $version: cached"; return; }
  mkdir -p "$out"
  log "downloading $module@$version"
  local dir
  dir=$(go mod download -json "$module@$version" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  build "$name $version" "$dir" "$out/$name" "$pkg"
}

crds() { # KubeRay's own CRDs, from the same module as its operator
  local out="$CACHE/kuberay-$KUBERAY_VERSION/crds"
  [[ -f "$out/ray.io_rayclusters.yaml" ]] && return
  local dir
  dir=$(go mod download -json "github.com/ray-project/kuberay/ray-operator@$KUBERAY_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  mkdir -p "$out" && cp "$dir"/config/crd/bases/*.yaml "$out/" && chmod u+w "$out"/*.yaml
  log "KubeRay CRDs copied to $out"
}

kwok_stages() { # kwok's own "fast" lifecycle stages: nodes Ready, pods Running at once
  local out="$CACHE/kwok-$KWOK_VERSION/stages.yaml"
  [[ -f $out ]] && return
  local dir
  dir=$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  local f
  for f in node/fast/node-initialize node/heartbeat-with-lease/node-heartbeat-with-lease \
           pod/fast/pod-ready pod/fast/pod-complete pod/fast/pod-delete; do
    cat "$dir/kustomize/stage/$f.yaml"; echo "---"
  done >"$out.tmp" && mv "$out.tmp" "$out"
  log "kwok stages written to $out"
}

t0=$(date +%s)
etcd
kubernetes
install_from_module kwok sigs.k8s.io/kwok "$KWOK_VERSION" "$CACHE/kwok-$KWOK_VERSION/bin" ./cmd/kwok
install_from_module kuberay-operator github.com/ray-project/kuberay/ray-operator \
  "$KUBERAY_VERSION" "$CACHE/kuberay-$KUBERAY_VERSION/bin" .
crds
kwok_stages
install_from_module helm helm.sh/helm/v3 "$HELM_VERSION" "$CACHE/helm-$HELM_VERSION/bin" ./cmd/helm
install_from_module coredns github.com/coredns/coredns "$COREDNS_VERSION" "$CACHE/coredns-$COREDNS_VERSION/bin" .
# The real node's NetworkPolicy enforcer: kube-router, run with its firewall only.
install_from_module kube-router github.com/cloudnativelabs/kube-router/v2 "$KUBE_ROUTER_VERSION" \
  "$CACHE/kube-router-$KUBE_ROUTER_VERSION/bin" ./cmd/kube-router
log "all binaries ready in $(( $(date +%s) - t0 ))s"
