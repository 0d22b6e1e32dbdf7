#!/usr/bin/env bash
# Real test environment for ecr-pull-secrets: kube-apiserver + etcd built from
# the Go module proxy, the ECR emulator (moto wrapped by
# tests/ecr-emulator/server.py) and the ECR registry emulator
# (tests/ecr-registry, serving a seeded test image), all on 127.0.0.1; with
# --node also a real node (the API server and the ECR emulator then listen on
# the node's bridge address instead, so that pods reach them).
#
#   tests/testenv.sh build [--node]      build and cache binaries and the venv
#   eval "$(tests/testenv.sh up [--node])" start everything, export its settings
#   tests/testenv.sh down [DIR]          stop what `up` started, remove DIR
#   tests/testenv.sh run [--node] -- CMD ARGS...  up, run CMD, always down; CMD's exit code
#   tests/testenv.sh user NAME [GROUP...] kubeconfig for a client-cert user
#   tests/testenv.sh import-image TAR... load image archives into the node's containerd
#   tests/testenv.sh venv                path of the emulator's venv (made by build)
#   tests/testenv.sh helm                path of the helm binary (made by build)
#   tests/testenv.sh registry-hosts CERTS_D  containerd hosts.toml files under
#                                        CERTS_D for the registry emulator's hosts
#                                        (needs the variables `up` exports)
#
# --node (root only, one per machine): kube-controller-manager, kube-scheduler,
# kubelet, kube-proxy (iptables), containerd + runc + CNI plugins on a bridge
# ecrtest0 (10.244.0.1/24) the environment creates; the API server and the
# emulator then listen on 10.244.0.1 instead of 127.0.0.1. docs/testing.md.
#
# Everything built lives outside the repo, in
#   ${ECR_PULL_SECRETS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ecr-pull-secrets}
# Versions: KUBE_VERSION (default v1.36.3), ETCD_VERSION (default v3.6.16),
# HELM_VERSION (default v3.22.0), CONTAINERD_VERSION (default v2.2.9),
# CNI_PLUGINS_VERSION (default v1.10.0).
# `up` prints only `export` lines on stdout; diagnostics go to stderr. Its
# directory, /tmp/ecr-testenv.XXXXXX, holds the PKI, the process logs
# (etcd.log, kube-apiserver.log, ecr-emulator.log, ecr-registry.log; with
# --node also containerd.log, kubelet.log, kube-proxy.log,
# kube-controller-manager.log, kube-scheduler.log), pids and users/.
# Other settings: TESTENV_AWS_REGION (us-east-1), TESTENV_START_TIMEOUT (60 s
# per component), TESTENV_NODE_START_TIMEOUT (180 s per node step),
# TESTENV_STOP_TIMEOUT (10 s per process before KILL),
# TESTENV_ADVERTISE_ADDRESS (default: a non-loopback IPv4 of this machine, else
# 10.0.0.1; without --node), TESTENV_KEEP_ON_FAILURE=1 (keep the directory when
# `up` fails), TESTENV_RUNC (the runc binary containerd runs; default: runc on PATH),
# TESTENV_REGISTRY_ACCOUNT (123456789012: moto's account, the emulator's default
# registry ID), TESTENV_REGISTRY_REGIONS (the AWS region and one other: a token
# of one region must not open the other's registry).
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
REPO_ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd -P)
SCRIPT_PATH="$SCRIPT_DIR/$(basename -- "${BASH_SOURCE[0]}")"

CACHE=${ECR_PULL_SECRETS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ecr-pull-secrets}
KUBE_VERSION=${KUBE_VERSION:-v1.36.3}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
HELM_VERSION=${HELM_VERSION:-v3.22.0}
START_TIMEOUT=${TESTENV_START_TIMEOUT:-60}
STOP_TIMEOUT=${TESTENV_STOP_TIMEOUT:-10}
AWS_REGION_DEFAULT=${TESTENV_AWS_REGION:-us-east-1}

EMULATOR_DIR="$REPO_ROOT/tests/ecr-emulator"
REQUIREMENTS="$EMULATOR_DIR/requirements.txt"
REGISTRY_SRC="$REPO_ROOT/tests/ecr-registry"
REGISTRY_ACCOUNT=${TESTENV_REGISTRY_ACCOUNT:-123456789012}
if [[ -n ${TESTENV_REGISTRY_REGIONS:-} ]]; then
  REGISTRY_REGIONS=$TESTENV_REGISTRY_REGIONS
elif [[ $AWS_REGION_DEFAULT == eu-west-1 ]]; then
  REGISTRY_REGIONS="eu-west-1 us-east-1"
else
  REGISTRY_REGIONS="$AWS_REGION_DEFAULT eu-west-1"
fi
# The seeded image: repository and tag in every registry host.
REGISTRY_REPO=testenv/hello
REGISTRY_TAG=1.0

KUBE_APISERVER_BIN="$CACHE/bin/kube-apiserver-$KUBE_VERSION"
KUBECTL_BIN="$CACHE/bin/kubectl-$KUBE_VERSION"
CONTAINERD_VERSION=${CONTAINERD_VERSION:-v2.2.9}
CNI_PLUGINS_VERSION=${CNI_PLUGINS_VERSION:-v1.10.0}
CONTAINERD_DIR="$CACHE/containerd-$CONTAINERD_VERSION/bin"
CNI_BIN_DIR="$CACHE/cni/$CNI_PLUGINS_VERSION/bin"
PAUSE_IMAGE=registry.k8s.io/pause:3.10
PAUSE_SRC="$REPO_ROOT/tests/node/pause.go"
PAUSE_DIR="$CACHE/pause-$(if [[ -f $PAUSE_SRC ]]; then sha256sum "$PAUSE_SRC" | cut -c1-12; fi)"
# The node's (`up --node`): built only by `build --node`, or by `up --node` when missing.
NODE_KUBE_NAMES=(kube-controller-manager kube-scheduler kubelet kube-proxy)
ETCD_BIN="$CACHE/bin/etcd-$ETCD_VERSION"
# "-kube": built with the Kubernetes version stamps below (older builds lacked them).
HELM_BIN="$CACHE/bin/helm-$HELM_VERSION-kube"

log() { printf 'testenv: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
  awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$SCRIPT_PATH" >&2
}

now() { date +%s; }

# quiet CMD...: run CMD, show its output only if it fails
quiet() {
  local out
  if ! out=$("$@" 2>&1); then
    printf '%s\n' "$out" >&2
    log "failed: $*"
    return 1
  fi
}

# ---------------------------------------------------------------- build

venv_dir() {
  [[ -f $REQUIREMENTS ]] || die "missing $REQUIREMENTS"
  local sum
  sum=$(sha256sum "$REQUIREMENTS" | cut -c1-12)
  printf '%s/venv-%s' "$CACHE" "$sum"
}

# go_wrapper DIR: a fresh throw-away module in DIR
go_wrapper() {
  local dir=$1 name=$2
  rm -rf "$dir"
  mkdir -p "$dir"
  (cd "$dir" && go mod init "$name" >/dev/null 2>&1)
}

# copy_go_settings DIR GOMOD: the `go` and `godebug` lines of GOMOD into DIR/go.mod
copy_go_settings() {
  local dir=$1 gomod=$2 gover kv
  gover=$(go mod edit -json "$gomod" | jq -r '.Go // empty')
  if [[ -n $gover ]]; then
    (cd "$dir" && go mod edit -go="$gover")
  fi
  while IFS= read -r kv; do
    [[ -n $kv ]] || continue
    (cd "$dir" && go mod edit -godebug="$kv")
  done < <(go mod edit -json "$gomod" | jq -r '(.Godebug // [])[] | "\(.Key)=\(.Value)"')
}

# gomod_of MODULE@VERSION: path of that module's go.mod in the module cache
gomod_of() {
  local json
  json=$(go mod download -json "$1") || die "go mod download -json $1 failed"
  jq -r '.GoMod' <<<"$json"
}

# kube_bin NAME: the cached binary of k8s.io/kubernetes/cmd/NAME at KUBE_VERSION
kube_bin() { printf '%s/bin/%s-%s' "$CACHE" "$1" "$KUBE_VERSION"; }

# build_kube NAME...: build k8s.io/kubernetes/cmd/NAME for each NAME (kube-apiserver, kubectl,
# and for the node kube-controller-manager, kube-scheduler, kubelet, kube-proxy), all from one
# wrapper module, so they share one module graph and Go's build cache.
build_kube() {
  local ver=$KUBE_VERSION
  local minor staging_ver wrapper gomod old new ldflags
  [[ $ver =~ ^v1\.([0-9]+)\.([0-9]+)(-.*)?$ ]] || die "KUBE_VERSION must look like v1.X.Y, got $ver"
  minor=${BASH_REMATCH[1]}
  staging_ver="v0.${minor}.${BASH_REMATCH[2]}${BASH_REMATCH[3]}"
  wrapper="$CACHE/src/kube-$ver"
  log "building $* $ver (wrapper module $wrapper)"
  go_wrapper "$wrapper" "testenv.local/kube"
  gomod=$(cd "$wrapper" && gomod_of "k8s.io/kubernetes@$ver")
  copy_go_settings "$wrapper" "$gomod"
  # k8s.io/kubernetes maps its staging modules to ./staging at v0.0.0; pin
  # each of them to the published v0.X.Y instead. Other replaces are copied.
  local n=0
  while IFS=$'\t' read -r old new; do
    if [[ $new == ./* || $new == ../* ]]; then
      [[ $old == k8s.io/* ]] || die "unexpected local replace in $gomod: $old => $new"
      (cd "$wrapper" && go mod edit -replace="$old=$old@$staging_ver")
      n=$((n + 1))
    else
      (cd "$wrapper" && go mod edit -replace="$old=$new")
    fi
  done < <(go mod edit -json "$gomod" |
    jq -r '(.Replace // [])[] | "\(.Old.Path)\(if .Old.Version then "@"+.Old.Version else "" end)\t\(.New.Path)\(if .New.Version then "@"+.New.Version else "" end)"')
  log "pinned $n staging modules to $staging_ver"
  local name
  local -a tools=()
  for name in "$@"; do tools+=("k8s.io/kubernetes/cmd/$name@$ver"); done
  (cd "$wrapper" && go get -tool "${tools[@]}" >&2)
  local v=k8s.io/component-base/version cv=k8s.io/client-go/pkg/version date
  date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  ldflags="-s -w"
  local p
  for p in "$v" "$cv"; do
    ldflags+=" -X $p.gitVersion=$ver -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=$date"
  done
  mkdir -p "$CACHE/bin"
  local out start
  for name in "$@"; do
    out=$(kube_bin "$name")
    start=$(now)
    (cd "$wrapper" &&
      CGO_ENABLED=0 go build -trimpath -ldflags="$ldflags" -o "$out.tmp" "k8s.io/kubernetes/cmd/$name" >&2)
    mv -f "$out.tmp" "$out"
    log "built $out in $(($(now) - start))s"
  done
}

build_etcd() {
  local ver=$ETCD_VERSION wrapper gomod old new
  [[ $ver =~ ^v3\.[0-9]+\.[0-9]+ ]] || die "ETCD_VERSION must look like v3.X.Y, got $ver"
  wrapper="$CACHE/src/etcd-$ver"
  log "building etcd $ver (wrapper module $wrapper)"
  go_wrapper "$wrapper" "testenv.local/etcd"
  gomod=$(cd "$wrapper" && gomod_of "go.etcd.io/etcd/server/v3@$ver")
  copy_go_settings "$wrapper" "$gomod"
  # server/v3 points its sibling modules (api/v3, client/...) at ../; pin them
  # to the same release. Its guards (go.etcd.io/etcd and go.etcd.io/tests/v3
  # => ./FORBIDDEN_DEPENDENCY) only matter inside etcd's own tree: dropped.
  while IFS=$'\t' read -r old new; do
    if [[ $new == *FORBIDDEN_DEPENDENCY* ]]; then
      continue
    elif [[ $new == ./* || $new == ../* ]]; then
      [[ $old == go.etcd.io/etcd/* ]] || die "unexpected local replace in $gomod: $old => $new"
      (cd "$wrapper" && go mod edit -replace="$old=$old@$ver")
    else
      (cd "$wrapper" && go mod edit -replace="$old=$new")
    fi
  done < <(go mod edit -json "$gomod" |
    jq -r '(.Replace // [])[] | "\(.Old.Path)\(if .Old.Version then "@"+.Old.Version else "" end)\t\(.New.Path)\(if .New.Version then "@"+.New.Version else "" end)"')
  (cd "$wrapper" && go get -tool "go.etcd.io/etcd/server/v3@$ver" >&2)
  mkdir -p "$CACHE/bin"
  (cd "$wrapper" &&
    CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o "$ETCD_BIN.tmp" go.etcd.io/etcd/server/v3 >&2)
  mv -f "$ETCD_BIN.tmp" "$ETCD_BIN"
  log "built $ETCD_BIN"
}

# helm's module has no replace directives, so a plain `go install` builds it. Like helm's own
# Makefile, stamp the Kubernetes version of its client-go, or `helm template` assumes v1.20.
build_helm() {
  local ver=$HELM_VERSION tmp gomod client_go minor
  [[ $ver =~ ^v3\.[0-9]+\.[0-9]+$ ]] || die "HELM_VERSION must look like v3.X.Y, got $ver"
  log "building helm $ver"
  tmp="$CACHE/src/helm-bin"
  rm -rf "$tmp"
  mkdir -p "$tmp" "$CACHE/bin"
  gomod=$(cd "$tmp" && gomod_of "helm.sh/helm/v3@$ver")
  client_go=$(awk '$1 == "k8s.io/client-go" { print $2 }' "$gomod")
  [[ $client_go =~ ^v0\.([0-9]+)\. ]] || die "no k8s.io/client-go version in $gomod"
  minor=${BASH_REMATCH[1]}
  GOBIN="$tmp" CGO_ENABLED=0 go install -trimpath \
    -ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$ver \
      -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor \
      -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor" \
    "helm.sh/helm/v3/cmd/helm@$ver" >&2
  mv -f "$tmp/helm" "$HELM_BIN"
  rm -rf "$tmp"
  log "built $HELM_BIN (Kubernetes 1.$minor capabilities)"
}

# containerd has no replace directives: `go install` builds it. Static (CGO_ENABLED=0) as its
# release Makefile builds the shim; btrfs is the one snapshotter that needs cgo, and it is not used.
build_containerd() {
  local ver=$CONTAINERD_VERSION tmp name start
  [[ $ver =~ ^v2\.[0-9]+\.[0-9]+$ ]] || die "CONTAINERD_VERSION must look like v2.X.Y, got $ver"
  tmp="$CACHE/src/containerd-bin"
  rm -rf "$tmp" "$CONTAINERD_DIR.tmp"
  mkdir -p "$tmp" "$CONTAINERD_DIR.tmp"
  for name in containerd ctr containerd-shim-runc-v2; do
    start=$(now)
    GOBIN="$tmp" CGO_ENABLED=0 go install -trimpath -tags "urfave_cli_no_docs no_btrfs" \
      -ldflags="-s -w -X github.com/containerd/containerd/v2/version.Version=$ver" \
      "github.com/containerd/containerd/v2/cmd/$name@$ver" >&2
    mv -f "$tmp/$name" "$CONTAINERD_DIR.tmp/"
    log "built $name $ver in $(($(now) - start))s"
  done
  rm -rf "$tmp" "$CONTAINERD_DIR"
  mv "$CONTAINERD_DIR.tmp" "$CONTAINERD_DIR"
}

build_cni() {
  local ver=$CNI_PLUGINS_VERSION tmp start
  [[ $ver =~ ^v1\.[0-9]+\.[0-9]+$ ]] || die "CNI_PLUGINS_VERSION must look like v1.X.Y, got $ver"
  tmp="$CNI_BIN_DIR.tmp"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  start=$(now)
  GOBIN="$tmp" CGO_ENABLED=0 go install -trimpath \
    -ldflags="-s -w -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$ver" \
    "github.com/containernetworking/plugins/plugins/main/bridge@$ver" \
    "github.com/containernetworking/plugins/plugins/main/loopback@$ver" \
    "github.com/containernetworking/plugins/plugins/ipam/host-local@$ver" \
    "github.com/containernetworking/plugins/plugins/meta/portmap@$ver" >&2
  rm -rf "$CNI_BIN_DIR"
  mkdir -p "$(dirname "$CNI_BIN_DIR")"
  mv "$tmp" "$CNI_BIN_DIR"
  log "built CNI plugins $ver (bridge, loopback, host-local, portmap) in $(($(now) - start))s"
}

# The pause image as an OCI archive written by hand (one uncompressed layer holding /pause), so
# that neither a registry nor an image builder is needed; containerd imports it under the name
# in its io.containerd.image.name annotation.
build_pause() {
  local out=$PAUSE_DIR tmp layer config manifest sha
  tmp="$out.tmp"
  rm -rf "$tmp"
  mkdir -p "$tmp/src" "$tmp/rootfs" "$tmp/oci/blobs/sha256"
  cp "$PAUSE_SRC" "$tmp/src/main.go"
  (cd "$tmp/src" && go mod init testenv.local/pause >/dev/null 2>&1 &&
    CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o "$tmp/rootfs/pause" . >&2)
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$tmp/rootfs" -cf "$tmp/layer.tar" pause
  layer=$(sha256sum "$tmp/layer.tar" | cut -d' ' -f1)
  mv "$tmp/layer.tar" "$tmp/oci/blobs/sha256/$layer"
  jq -cn --arg diff "sha256:$layer" '{
      architecture: "amd64", os: "linux",
      config: {Entrypoint: ["/pause"], User: "65535:65535"},
      rootfs: {type: "layers", diff_ids: [$diff]}}' >"$tmp/config.json"
  config=$(sha256sum "$tmp/config.json" | cut -d' ' -f1)
  jq -cn --arg config "sha256:$config" --argjson csize "$(stat -c %s "$tmp/config.json")" \
    --arg layer "sha256:$layer" --argjson lsize "$(stat -c %s "$tmp/oci/blobs/sha256/$layer")" '{
      schemaVersion: 2, mediaType: "application/vnd.oci.image.manifest.v1+json",
      config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $config, size: $csize},
      layers: [{mediaType: "application/vnd.oci.image.layer.v1.tar", digest: $layer, size: $lsize}]}' \
    >"$tmp/manifest.json"
  manifest=$(sha256sum "$tmp/manifest.json" | cut -d' ' -f1)
  mv "$tmp/config.json" "$tmp/oci/blobs/sha256/$config"
  jq -cn --arg m "sha256:$manifest" --argjson size "$(stat -c %s "$tmp/manifest.json")" \
    --arg name "$PAUSE_IMAGE" --arg tag "${PAUSE_IMAGE##*:}" '{
      schemaVersion: 2, mediaType: "application/vnd.oci.image.index.v1+json",
      manifests: [{mediaType: "application/vnd.oci.image.manifest.v1+json", digest: $m, size: $size,
        platform: {architecture: "amd64", os: "linux"},
        annotations: {"io.containerd.image.name": $name, "org.opencontainers.image.ref.name": $tag}}]}' \
    >"$tmp/oci/index.json"
  mv "$tmp/manifest.json" "$tmp/oci/blobs/sha256/$manifest"
  printf '{"imageLayoutVersion":"1.0.0"}' >"$tmp/oci/oci-layout"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$tmp/oci" -cf "$tmp/pause.tar" .
  sha=$(sha256sum "$tmp/pause.tar" | cut -d' ' -f1)
  rm -rf "$out"
  mkdir -p "$out"
  mv "$tmp/pause.tar" "$out/pause.tar"
  rm -rf "$tmp"
  log "built $PAUSE_IMAGE as $out/pause.tar (sha256 $sha)"
}

build_venv() {
  local venv
  venv=$(venv_dir)
  if [[ -f $venv/.complete ]]; then
    return 0
  fi
  log "creating venv $venv from $REQUIREMENTS"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --disable-pip-version-check -q -r "$REQUIREMENTS" >&2
  cp "$REQUIREMENTS" "$venv/.requirements.txt"
  touch "$venv/.complete"
}

# registry_dir: where the registry emulator and its seeded image live, keyed by
# its sources and the Go version (a rebuild takes seconds).
registry_dir() {
  local sum
  sum=$({ go version; cd "$REGISTRY_SRC" && find . -type f \( -name '*.go' -o -name 'go.mod' -o -name 'go.sum' \) | sort | xargs sha256sum; } |
    sha256sum | cut -c1-12)
  printf '%s/registry-%s' "$CACHE" "$sum"
}

build_registry() {
  local dir tmp
  dir=$(registry_dir)
  [[ -f $dir/.complete ]] && { log "ECR registry emulator: cached"; return 0; }
  log "building the ECR registry emulator and its seeded image into $dir"
  tmp="$dir.tmp"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  (cd "$REGISTRY_SRC" &&
    CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o "$tmp/ecr-registry" . >&2 &&
    CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o "$tmp/hello" ./hello >&2)
  "$tmp/ecr-registry" seed --program "$tmp/hello" --name hello --tag "$REGISTRY_TAG" \
    --out "$tmp/layouts/$REGISTRY_REPO" >"$tmp/digest"
  touch "$tmp/.complete"
  rm -rf "$dir"
  mv "$tmp" "$dir"
  log "seeded $REGISTRY_REPO:$REGISTRY_TAG $(cat "$dir/digest")"
}

cmd_build() {
  local start tool node=""
  if [[ ${1:-} == --node ]]; then node=1; shift; fi
  (($# == 0)) || die "build: unknown argument $1 (usage: build [--node])"
  start=$(now)
  for tool in go jq python3 flock; do
    command -v "$tool" >/dev/null || die "$tool is required to build"
  done
  mkdir -p "$CACHE"
  exec 9>"$CACHE/.build.lock"
  flock 9
  local name
  local -a kube_missing=()
  for name in kube-apiserver kubectl ${node:+"${NODE_KUBE_NAMES[@]}"}; do
    [[ -x $(kube_bin "$name") ]] || kube_missing+=("$name")
  done
  if ((${#kube_missing[@]} == 0)); then
    log "kube-apiserver, kubectl${node:+, ${NODE_KUBE_NAMES[*]}} $KUBE_VERSION: cached"
  else
    build_kube "${kube_missing[@]}"
  fi
  if [[ -x $ETCD_BIN ]]; then
    log "etcd $ETCD_VERSION: cached"
  else
    build_etcd
  fi
  if [[ -x $HELM_BIN ]]; then
    log "helm $HELM_VERSION: cached"
  else
    build_helm
  fi
  if [[ -n $node ]]; then
    if [[ -x $CONTAINERD_DIR/containerd && -x $CONTAINERD_DIR/ctr && -x $CONTAINERD_DIR/containerd-shim-runc-v2 ]]; then
      log "containerd $CONTAINERD_VERSION: cached"
    else
      build_containerd
    fi
    if [[ -x $CNI_BIN_DIR/bridge && -x $CNI_BIN_DIR/portmap ]]; then
      log "CNI plugins $CNI_PLUGINS_VERSION: cached"
    else
      build_cni
    fi
    if [[ -f $PAUSE_DIR/pause.tar ]]; then
      log "pause image: cached"
    else
      build_pause
    fi
  fi
  build_venv
  build_registry
  flock -u 9
  exec 9>&-
  log "build done in $(($(now) - start))s (cache $CACHE)"
}

built() {
  [[ -x $KUBE_APISERVER_BIN && -x $KUBECTL_BIN && -x $ETCD_BIN && -x $HELM_BIN && -f $(venv_dir)/.complete &&
    -f $(registry_dir)/.complete ]]
}

built_node() {
  local name
  for name in "${NODE_KUBE_NAMES[@]}"; do [[ -x $(kube_bin "$name") ]] || return 1; done
  [[ -x $CONTAINERD_DIR/containerd && -x $CONTAINERD_DIR/ctr && -x $CONTAINERD_DIR/containerd-shim-runc-v2 &&
    -x $CNI_BIN_DIR/bridge && -x $CNI_BIN_DIR/portmap && -f $PAUSE_DIR/pause.tar ]]
}

# ---------------------------------------------------------------- up

# free_ports N: N distinct free TCP ports on 127.0.0.1
free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
EOF
}

# advertise_address: a non-loopback IPv4 address of this machine, or 10.0.0.1.
# With --endpoint-reconciler-type=none nothing ever connects to it.
advertise_address() {
  local ip=""
  if command -v ip >/dev/null; then
    ip=$(ip -4 -o addr show scope global 2>/dev/null | awk '!done {split($4, a, "/"); print a[1]; done = 1}')
  fi
  if [[ -z $ip ]] && command -v hostname >/dev/null; then
    ip=$(hostname -I 2>/dev/null | tr ' ' '\n' | grep -E '^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$' | grep -v '^127\.' | head -n1 || true)
  fi
  printf '%s' "${ip:-10.0.0.1}"
}

# sign PKI OUT NAME SUBJ EXTFILE: OUT/NAME.{key,crt} signed by the CA in PKI
sign() {
  local pki=$1 out=$2 name=$3 subj=$4 ext=$5
  quiet openssl ecparam -name prime256v1 -genkey -noout -out "$out/$name.key"
  chmod 600 "$out/$name.key"
  quiet openssl req -new -key "$out/$name.key" -subj "$subj" -out "$out/$name.csr"
  quiet openssl x509 -req -in "$out/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 7 -sha256 -extfile "$ext" \
    -out "$out/$name.crt"
  rm -f "$out/$name.csr"
}

make_pki() {
  local pki=$1
  mkdir -p "$pki"
  quiet openssl ecparam -name prime256v1 -genkey -noout -out "$pki/ca.key"
  quiet openssl req -x509 -new -key "$pki/ca.key" -subj "/CN=ecr-testenv-ca" -days 7 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -out "$pki/ca.crt"
  cat >"$pki/serving.ext" <<'EOF'
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.0.0.1,IP:10.244.0.1
EOF
  cat >"$pki/client.ext" <<'EOF'
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth
EOF
  sign "$pki" "$pki" apiserver "/CN=kube-apiserver" "$pki/serving.ext"
  sign "$pki" "$pki" admin "/CN=admin/O=system:masters" "$pki/client.ext"
  quiet openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$pki/sa.key"
  quiet openssl pkey -in "$pki/sa.key" -pubout -out "$pki/sa.pub"
  chmod 600 "$pki/ca.key" "$pki/sa.key"
}

# write_kubeconfig FILE USER CERT KEY
write_kubeconfig() {
  local file=$1 user=$2 cert=$3 key=$4 server ca
  server=$(cat "$TESTENV_DIR_/apiserver-url")
  ca="$TESTENV_DIR_/pki/ca.crt"
  (umask 077 && cat >"$file") <<EOF
apiVersion: v1
kind: Config
clusters:
- name: ecr-testenv
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 <"$ca")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 <"$cert")
    client-key-data: $(base64 -w0 <"$key")
contexts:
- name: $user@ecr-testenv
  context:
    cluster: ecr-testenv
    user: $user
current-context: $user@ecr-testenv
EOF
}

# start NAME CMD ARGS...: start in its own session, log to $DIR/NAME.log
start() {
  local name=$1
  shift
  setsid "$@" </dev/null >"$TESTENV_DIR_/$name.log" 2>&1 &
  local pid=$!
  printf '%s %s\n' "$name" "$pid" >>"$TESTENV_DIR_/pids"
  log "started $name (pid $pid, log $TESTENV_DIR_/$name.log)"
}

pid_of() { awk -v n="$1" '$1 == n { print $2 }' "$TESTENV_DIR_/pids"; }

# wait_for NAME DESCRIPTION CMD...: poll CMD until it succeeds, NAME dies or timeout
wait_for() {
  local name=$1 what=$2
  shift 2
  local pid deadline
  pid=$(pid_of "$name")
  deadline=$(($(now) + START_TIMEOUT))
  until "$@" >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then
      FAILED_LOG="$TESTENV_DIR_/$name.log"
      die "$name exited before $what"
    fi
    if (($(now) >= deadline)); then
      FAILED_LOG="$TESTENV_DIR_/$name.log"
      die "$name: no $what within ${START_TIMEOUT}s"
    fi
    sleep 0.2
  done
  log "$name: $what"
}

# registry_challenges CA PORT: GET /v2/ without credentials answers 401 with a Basic challenge
registry_challenges() {
  local out
  out=$(curl -sS --max-time 2 --cacert "$1" -o /dev/null -D - "https://127.0.0.1:$2/v2/") || return 1
  grep -q '^HTTP/[0-9.]* 401' <<<"$out" && grep -qi '^www-authenticate: Basic ' <<<"$out"
}

# Invoked by trap only.
# shellcheck disable=SC2317
up_cleanup() {
  local rc=$?
  trap - EXIT
  if ((rc != 0)) && [[ -n ${TESTENV_DIR_:-} && -d $TESTENV_DIR_ ]]; then
    local f
    local -a logs=("$TESTENV_DIR_"/*.log)
    if [[ -n ${FAILED_LOG:-} ]]; then logs=("$FAILED_LOG"); fi
    for f in "${logs[@]}"; do
      [[ -f $f ]] || continue
      printf '\n==> tail of %s\n' "$f" >&2
      tail -n 40 "$f" >&2
    done
    if [[ -n ${TESTENV_KEEP_ON_FAILURE:-} ]]; then
      log "up failed; stopping what it started, keeping $TESTENV_DIR_ (TESTENV_KEEP_ON_FAILURE)"
      stop_dir "$TESTENV_DIR_" keep >&2 || true
    else
      log "up failed; stopping what it started"
      stop_dir "$TESTENV_DIR_" >&2 || true
    fi
  fi
  exit "$rc"
}

cmd_up() {
  local node=""
  if [[ ${1:-} == --node ]]; then node=1; shift; fi
  (($# == 0)) || die "up: unknown argument $1 (usage: up [--node])"
  if ! built || { [[ -n $node ]] && ! built_node; }; then
    log "build artifacts missing in $CACHE; running build first"
    cmd_build ${node:+--node} >&2
  fi
  if [[ -n $node ]]; then node_preflight; fi
  [[ -f $EMULATOR_DIR/server.py ]] || die "missing $EMULATOR_DIR/server.py"
  local tool
  for tool in openssl curl python3 setsid; do
    command -v "$tool" >/dev/null || die "$tool is required"
  done
  local venv
  venv=$(venv_dir)

  TESTENV_DIR_=$(mktemp -d /tmp/ecr-testenv.XXXXXX)
  FAILED_LOG=""
  trap up_cleanup EXIT
  trap 'exit 130' INT TERM
  local dir=$TESTENV_DIR_
  : >"$dir/pids"
  : >"$dir/.ecr-testenv"
  # Until up is done: who is making this environment (a killed up leaves it behind).
  printf '%s\n' "$$" >"$dir/up.pid"
  log "dir $dir"
  if [[ -n $node ]]; then
    printf '%s\n' "$dir" >"$NODE_OWNER"
    : >"$dir/node"
    node_network_up
  fi

  local etcd_port peer_port api_port ecr_port adv
  read -r etcd_port peer_port api_port ecr_port <<<"$(free_ports 4)"
  # One registry listener per ECR host: containerd sends the endpoint's address as
  # Host, so the port says which registry (which region) a request is for.
  local -a registry_hosts=() registry_ports=()
  local region
  for region in $REGISTRY_REGIONS; do
    registry_hosts+=("$REGISTRY_ACCOUNT.dkr.ecr.$region.amazonaws.com")
  done
  read -r -a registry_ports <<<"$(free_ports "${#registry_hosts[@]}")"
  adv=${TESTENV_ADVERTISE_ADDRESS:-$(advertise_address)}
  # Without a node: only 127.0.0.1, and nothing ever connects to the advertised address. With
  # one: only the bridge address, which pods reach through the kubernetes Service and
  # kube-proxy, and the API server keeps that Service's endpoints itself (lease reconciler).
  local bind=127.0.0.1 reconciler=none authz=RBAC
  local -a node_flags=(--disable-admission-plugins=ServiceAccount)
  if [[ -n $node ]]; then
    bind=$NODE_IP adv=$NODE_IP reconciler=lease authz=Node,RBAC
    # The kubelet by its IP: its host name would go to this machine's DNS server, off the machine.
    node_flags=(--enable-admission-plugins=NodeRestriction --kubelet-preferred-address-types=InternalIP
      --kubelet-client-certificate="$dir/pki/apiserver-kubelet-client.crt"
      --kubelet-client-key="$dir/pki/apiserver-kubelet-client.key")
  fi
  printf 'https://%s:%s\n' "$bind" "$api_port" >"$dir/apiserver-url"
  # With a node the emulator listens on the bridge address, so that pods reach it too.
  local ecr_host=127.0.0.1
  if [[ -n $node ]]; then ecr_host=$NODE_IP; fi
  printf 'http://%s:%s\n' "$ecr_host" "$ecr_port" >"$dir/ecr-url"

  make_pki "$dir/pki"
  local pki=$dir/pki
  local san="IP:127.0.0.1,DNS:localhost" h
  for h in "${registry_hosts[@]}"; do san+=",DNS:$h"; done
  sed "s/^subjectAltName=.*/subjectAltName=$san/" "$pki/serving.ext" >"$pki/registry.ext"
  sign "$pki" "$pki" registry "/CN=ecr-registry" "$pki/registry.ext"
  if [[ -n $node ]]; then node_pki "$pki"; fi

  start etcd "$ETCD_BIN" \
    --name=testenv \
    --data-dir="$dir/etcd-data" \
    --listen-client-urls="http://127.0.0.1:$etcd_port" \
    --advertise-client-urls="http://127.0.0.1:$etcd_port" \
    --listen-peer-urls="http://127.0.0.1:$peer_port" \
    --initial-advertise-peer-urls="http://127.0.0.1:$peer_port" \
    --initial-cluster="testenv=http://127.0.0.1:$peer_port" \
    --initial-cluster-state=new \
    --unsafe-no-fsync

  start ecr-emulator "$venv/bin/python" "$EMULATOR_DIR/server.py" \
    --host "$ecr_host" --port "$ecr_port" \
    --control "$dir/ecr-control.json" \
    --calls "$dir/ecr-calls" \
    --log "$dir/ecr-calls.log"

  local rdir i
  rdir=$(registry_dir)
  local -a listen=()
  for i in "${!registry_hosts[@]}"; do
    listen+=(--listen "${registry_hosts[$i]}=127.0.0.1:${registry_ports[$i]}")
  done
  start ecr-registry "$rdir/ecr-registry" serve \
    --calls-log "$dir/ecr-calls.log" \
    --cert "$pki/registry.crt" --key "$pki/registry.key" \
    --repo "$REGISTRY_REPO=$rdir/layouts/$REGISTRY_REPO" \
    "${listen[@]}" \
    --ready-file "$dir/ecr-registry.json"

  wait_for etcd "healthy" curl -fsS --max-time 2 "http://127.0.0.1:$etcd_port/health"

  start kube-apiserver "$KUBE_APISERVER_BIN" \
    --etcd-servers="http://127.0.0.1:$etcd_port" \
    --bind-address="$bind" \
    --secure-port="$api_port" \
    --advertise-address="$adv" \
    --endpoint-reconciler-type="$reconciler" \
    --cert-dir="$dir/apiserver-certs" \
    --tls-cert-file="$pki/apiserver.crt" \
    --tls-private-key-file="$pki/apiserver.key" \
    --client-ca-file="$pki/ca.crt" \
    --service-account-issuer=https://kubernetes.default.svc \
    --service-account-key-file="$pki/sa.pub" \
    --service-account-signing-key-file="$pki/sa.key" \
    --service-cluster-ip-range=10.0.0.0/24 \
    --authorization-mode="$authz" \
    "${node_flags[@]}"

  write_kubeconfig "$dir/admin.kubeconfig" admin "$pki/admin.crt" "$pki/admin.key"
  mkdir -p "$dir/bin" "$dir/users"
  ln -s "$KUBECTL_BIN" "$dir/bin/kubectl"
  ln -s "$HELM_BIN" "$dir/bin/helm"

  wait_for kube-apiserver "/readyz ok" curl -fsS --max-time 5 \
    --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
    "https://$bind:$api_port/readyz"
  wait_for ecr-emulator "healthy" curl -fsS --max-time 2 "http://$ecr_host:$ecr_port/_emulator/health"
  wait_for ecr-registry "listening" test -s "$dir/ecr-registry.json"
  # Unauthenticated, the registry answers 401 with ECR's basic challenge.
  wait_for ecr-registry "401 without credentials" registry_challenges "$pki/ca.crt" "${registry_ports[0]}"

  local registry_list="" image_digest
  for i in "${!registry_hosts[@]}"; do
    registry_list+="${registry_list:+ }${registry_hosts[$i]}=127.0.0.1:${registry_ports[$i]}"
  done
  image_digest=$(cat "$rdir/digest")
  if [[ -n $node ]]; then
    node_up "$dir"
    # The kubelet pulls ECR host names from the registry emulator (containerd on this host
    # reaches its loopback listeners).
    ECR_REGISTRY_HOSTS=$registry_list ECR_REGISTRY_CA="$pki/ca.crt" \
      cmd_registry_hosts "$dir/containerd/certs.d" >/dev/null
  fi

  local key val
  {
    for key in KUBECONFIG AWS_ENDPOINT_URL_ECR AWS_ENDPOINT_URL_STS AWS_ENDPOINT_URL_ECR_PUBLIC \
      AWS_REGION AWS_DEFAULT_REGION AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_EC2_METADATA_DISABLED \
      ECR_EMULATOR_CONTROL ECR_EMULATOR_CALLS ECR_EMULATOR_LOG ECR_REGISTRY_CA ECR_REGISTRY_HOSTS \
      ECR_REGISTRY_HOST ECR_REGISTRY_ADDRESS ECR_REGISTRY_IMAGE ECR_REGISTRY_IMAGE_DIGEST TESTENV_DIR; do
      case $key in
        KUBECONFIG) val="$dir/admin.kubeconfig" ;;
        AWS_ENDPOINT_URL_*) val="http://$ecr_host:$ecr_port" ;;
        AWS_REGION | AWS_DEFAULT_REGION) val=$AWS_REGION_DEFAULT ;;
        AWS_ACCESS_KEY_ID) val=AKIATESTENV000000001 ;;
        AWS_SECRET_ACCESS_KEY) val=testenv-secret-access-key-not-a-real-one ;;
        AWS_EC2_METADATA_DISABLED) val=true ;;
        ECR_EMULATOR_CONTROL) val="$dir/ecr-control.json" ;;
        ECR_EMULATOR_CALLS) val="$dir/ecr-calls" ;;
        ECR_EMULATOR_LOG) val="$dir/ecr-calls.log" ;;
        ECR_REGISTRY_CA) val="$pki/ca.crt" ;;
        ECR_REGISTRY_HOSTS) val=$registry_list ;;
        ECR_REGISTRY_HOST) val=${registry_hosts[0]} ;;
        ECR_REGISTRY_ADDRESS) val="127.0.0.1:${registry_ports[0]}" ;;
        ECR_REGISTRY_IMAGE) val="${registry_hosts[0]}/$REGISTRY_REPO:$REGISTRY_TAG" ;;
        ECR_REGISTRY_IMAGE_DIGEST) val=$image_digest ;;
        TESTENV_DIR) val=$dir ;;
      esac
      printf 'export %s=%q\n' "$key" "$val"
    done
    # $PATH stays literal: it expands in the shell that evals these lines.
    # shellcheck disable=SC2016
    printf 'export PATH=%q:"$PATH"\n' "$dir/bin"
    if [[ -n $node ]]; then
      printf 'export TESTENV_NODE_NAME=%q\n' "$NODE_NAME"
      printf 'export TESTENV_NODE_IP=%q\n' "$NODE_IP"
      printf 'export TESTENV_POD_CIDR=%q\n' "$POD_CIDR"
      printf 'export TESTENV_CONTAINERD_ADDRESS=%q\n' "$dir/containerd/containerd.sock"
      printf 'export TESTENV_CONTAINERD_NAMESPACE=k8s.io\n'
      printf 'export TESTENV_CONTAINERD_CERTS_D=%q\n' "$dir/containerd/certs.d"
      printf 'export TESTENV_CONTAINERD_SNAPSHOTTER=%q\n' "$NODE_SNAPSHOTTER"
      printf 'export TESTENV_CTR=%q\n' "$dir/bin/ctr"
      printf 'export TESTENV_PAUSE_IMAGE=%q\n' "$PAUSE_IMAGE"
    fi
  } >"$dir/env"
  rm -f "$dir/up.pid"
  trap - EXIT INT TERM
  log "ready: apiserver $(cat "$dir/apiserver-url"), etcd 127.0.0.1:$etcd_port, ECR emulator http://$ecr_host:$ecr_port, ECR registries $registry_list (advertise-address $adv)${node:+, node $NODE_NAME Ready}"
  cat "$dir/env"
}

# ---------------------------------------------------------------- node (up --node)

# Fixed names, so that leftovers of an interrupted run are found by the next `up --node` and
# `down`. One node environment per machine at a time.
NODE_NAME=ecrtest-node
NODE_BRIDGE=ecrtest0
NODE_IP=10.244.0.1
POD_CIDR=10.244.0.0/24
SERVICE_CIDR=10.0.0.0/24
NODE_PROBE_NETNS=ecrtest-probe
NODE_PROBE_IP=10.244.0.250
NODE_CHAIN=ECRTEST-FORWARD
# kubelet's cgroupRoot: /ecrtest-node/kubepods/... under every cgroup v1 controller
NODE_CGROUP=ecrtest-node
# holds the directory of the environment that runs the node
NODE_OWNER=/run/ecr-testenv-node
# kernel settings the kubelet changes at start (it has no "leave them" mode); down restores them
NODE_SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes)

node_preflight() {
  local tool
  for tool in ip iptables iptables-save runc mount umount nsenter; do
    command -v "$tool" >/dev/null || die "$tool is required for --node (tests/install-deps.sh --node installs it)"
  done
  (($(id -u) == 0)) || die "--node needs root (bridges, iptables, mounts, cgroups)"
  local other=""
  if [[ -f $NODE_OWNER ]]; then other=$(cat "$NODE_OWNER"); fi
  if [[ -n $other && -f $other/pids ]] && node_alive "$other" && ! abandoned "$other"; then
    die "a node environment already runs in $other (tests/testenv.sh down $other)"
  fi
  # Whatever an interrupted run left behind: its directory, whatever of it still runs, and
  # what the fixed names find.
  if [[ -n $other && -f $other/.ecr-testenv ]]; then
    log "removing what the interrupted run in $other left"
    stop_dir "$other" >&2
  else
    node_teardown ""
  fi
}

# abandoned DIR: the up that was making DIR, or the run that DIR lived for, was killed
abandoned() {
  local dir=$1 f pid
  for f in up.pid run.pid; do
    [[ -f $dir/$f ]] || continue
    pid=$(cat "$dir/$f")
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    if ! { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | grep >/dev/null -F testenv.sh; then return 0; fi
  done
  return 1
}

# node_alive DIR: the kubelet or containerd of DIR still runs
node_alive() {
  local dir=$1 name pid
  while read -r name pid; do
    case $name in kubelet | containerd) belongs "$pid" "$dir" && return 0 ;; esac
  done <"$dir/pids"
  return 1
}

node_network_up() {
  ip link add "$NODE_BRIDGE" type bridge
  ip addr add "$NODE_IP/24" dev "$NODE_BRIDGE"
  ip link set "$NODE_BRIDGE" up
  # Pods have no default route (only the pod and service CIDRs) and IP forwarding stays as it is
  # (off here); should anything turn it on, nothing from or to the bridge is forwarded elsewhere.
  iptables -w -N "$NODE_CHAIN"
  iptables -w -A "$NODE_CHAIN" -i "$NODE_BRIDGE" ! -o "$NODE_BRIDGE" -j DROP
  iptables -w -A "$NODE_CHAIN" ! -i "$NODE_BRIDGE" -o "$NODE_BRIDGE" -j DROP
  iptables -w -I FORWARD 1 -j "$NODE_CHAIN"
}

node_pki() {
  local pki=$1
  sign "$pki" "$pki" kubelet "/CN=system:node:$NODE_NAME/O=system:nodes" "$pki/client.ext"
  sign "$pki" "$pki" kube-proxy "/CN=system:kube-proxy" "$pki/client.ext"
  sign "$pki" "$pki" kube-controller-manager "/CN=system:kube-controller-manager" "$pki/client.ext"
  sign "$pki" "$pki" kube-scheduler "/CN=system:kube-scheduler" "$pki/client.ext"
  sign "$pki" "$pki" apiserver-kubelet-client "/CN=kube-apiserver-kubelet-client/O=system:masters" "$pki/client.ext"
}

write_containerd_config() {
  local dir=$1 c=$1/containerd
  mkdir -p "$c/root" "$c/state" "$c/certs.d" "$c/opt" "$dir/cni/net.d" "$dir/cni/ipam"
  cat >"$c/config.toml" <<TOML
version = 3
root = "$c/root"
state = "$c/state"
disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.blockfile",
  "io.containerd.snapshotter.v1.erofs", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "$c/containerd.sock"
[ttrpc]
  address = "$c/containerd.sock.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "$c/opt"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "$NODE_SNAPSHOTTER"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "$PAUSE_IMAGE"
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = "$c/certs.d"

[plugins."io.containerd.cri.v1.runtime"]
  netns_mounts_under_state_dir = true
  # Without CAP_SYS_RESOURCE (this machine's containers lack it) no process may lower its
  # oom_score_adj, and runc fails to start the pause container at -998; keep scores >= ours.
  restrict_oom_score_adj = true
  enable_cdi = false
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      snapshotter = "$NODE_SNAPSHOTTER"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "${TESTENV_RUNC:-$(command -v runc)}"
        Root = "$c/runc"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["$CNI_BIN_DIR"]
    conf_dir = "$dir/cni/net.d"
    max_conf_num = 1

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
TOML
  # No default route and no masquerade: pods reach each other, the node (the bridge address)
  # and, through kube-proxy's DNAT, services. host-local keeps its leases in DIR.
  cat >"$dir/cni/net.d/10-ecrtest.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "ecrtest",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$NODE_BRIDGE",
      "isGateway": false,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$dir/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "rangeStart": "10.244.0.10", "rangeEnd": "10.244.0.200", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "$SERVICE_CIDR", "gw": "$NODE_IP"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
}

write_kubelet_config() {
  local dir=$1 k=$1/kubelet
  mkdir -p "$k/root" "$k/pods"
  printf 'nameserver 127.0.0.1\noptions ndots:1\n' >"$dir/resolv.conf"
  cat >"$k/config.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /$NODE_CGROUP
cgroupsPerQOS: true
containerRuntimeEndpoint: unix://$dir/containerd/containerd.sock
address: $NODE_IP
port: $NODE_KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $NODE_KUBELET_HEALTHZ_PORT
podCIDR: $POD_CIDR
resolvConf: $dir/resolv.conf
clusterDNS: []
failSwapOn: false
protectKernelDefaults: false
staticPodPath: $k/pods
podLogsDir: $k/pod-logs
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: $dir/pki/ca.crt
authorization:
  mode: Webhook
evictionHard:
  memory.available: 50Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
  imagefs.inodesFree: 1%
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
registerNode: true
YAML
}

write_kube_proxy_config() {
  local dir=$1
  cat >"$dir/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $dir/kube-proxy.kubeconfig
hostnameOverride: $NODE_NAME
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:$NODE_PROXY_HEALTHZ_PORT
metricsBindAddress: 127.0.0.1:$NODE_PROXY_METRICS_PORT
mode: iptables
clusterCIDR: $POD_CIDR
nodePortAddresses: ["$POD_CIDR"]
iptables:
  localhostNodePorts: false
  masqueradeAll: false
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
YAML
}

# node_up DIR: containerd, the pause image, kubelet, kube-proxy, kube-controller-manager,
# kube-scheduler; then a Ready node, a Running pause pod, and the kubernetes Service reached
# through kube-proxy from a network namespace on the bridge.
node_up() {
  local dir=$1 pki=$1/pki sysctl
  # wait_for's limit: a node takes longer than one process to come up
  local START_TIMEOUT=${TESTENV_NODE_START_TIMEOUT:-180}
  for sysctl in "${NODE_SYSCTLS[@]}"; do
    printf '%s %s\n' "$sysctl" "$(sysctl -n "$sysctl")" >>"$dir/node-sysctls"
  done
  write_kubeconfig "$dir/kubelet.kubeconfig" "system:node:$NODE_NAME" "$pki/kubelet.crt" "$pki/kubelet.key"
  write_kubeconfig "$dir/kube-proxy.kubeconfig" kube-proxy "$pki/kube-proxy.crt" "$pki/kube-proxy.key"
  write_kubeconfig "$dir/kube-controller-manager.kubeconfig" kube-controller-manager \
    "$pki/kube-controller-manager.crt" "$pki/kube-controller-manager.key"
  write_kubeconfig "$dir/kube-scheduler.kubeconfig" kube-scheduler "$pki/kube-scheduler.crt" "$pki/kube-scheduler.key"

  NODE_SNAPSHOTTER=overlayfs
  if ! node_overlay_works "$dir"; then
    log "overlay mounts fail here; containerd uses the native snapshotter"
    NODE_SNAPSHOTTER=native
  fi
  write_containerd_config "$dir"
  local sock=$dir/containerd/containerd.sock
  start containerd env PATH="$CONTAINERD_DIR:$PATH" "$CONTAINERD_DIR/containerd" --config "$dir/containerd/config.toml"
  wait_for containerd "socket" "$CONTAINERD_DIR/ctr" --address "$sock" version
  cat >"$dir/bin/ctr" <<SH
#!/bin/sh
exec "$CONTAINERD_DIR/ctr" --address "$sock" --namespace k8s.io "\$@"
SH
  chmod +x "$dir/bin/ctr"
  quiet "$dir/bin/ctr" images import --snapshotter "$NODE_SNAPSHOTTER" "$PAUSE_DIR/pause.tar"
  log "imported $PAUSE_IMAGE"

  local ports
  read -r NODE_KUBELET_PORT NODE_KUBELET_HEALTHZ_PORT NODE_PROXY_HEALTHZ_PORT NODE_PROXY_METRICS_PORT \
    ports <<<"$(free_ports 6)"
  local cm_port sched_port
  read -r cm_port sched_port <<<"$ports"
  write_kubelet_config "$dir"
  write_kube_proxy_config "$dir"
  node_make_cgroups

  start kubelet "$(kube_bin kubelet)" \
    --config="$dir/kubelet/config.yaml" \
    --kubeconfig="$dir/kubelet.kubeconfig" \
    --root-dir="$dir/kubelet/root" \
    --cert-dir="$dir/kubelet/pki" \
    --hostname-override="$NODE_NAME" \
    --node-ip="$NODE_IP" \
    --v=1
  start kube-proxy "$(kube_bin kube-proxy)" --config="$dir/kube-proxy.yaml" --v=1
  start kube-controller-manager "$(kube_bin kube-controller-manager)" \
    --kubeconfig="$dir/kube-controller-manager.kubeconfig" \
    --authentication-kubeconfig="$dir/kube-controller-manager.kubeconfig" \
    --authorization-kubeconfig="$dir/kube-controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$cm_port" \
    --cert-dir="$dir/kube-controller-manager-certs" \
    --service-account-private-key-file="$pki/sa.key" \
    --root-ca-file="$pki/ca.crt" \
    --cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" \
    --use-service-account-credentials=true \
    --controllers='*' \
    --allocate-node-cidrs=false \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --leader-elect=false \
    --v=1
  start kube-scheduler "$(kube_bin kube-scheduler)" \
    --kubeconfig="$dir/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig="$dir/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig="$dir/kube-scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$sched_port" \
    --cert-dir="$dir/kube-scheduler-certs" \
    --leader-elect=false \
    --v=1

  local -a kubectl=("$KUBECTL_BIN" --kubeconfig "$dir/admin.kubeconfig")
  wait_for kubelet "node $NODE_NAME Ready" \
    "${kubectl[@]}" wait --for=condition=Ready "node/$NODE_NAME" --timeout=2s
  wait_for kube-controller-manager "default ServiceAccount" \
    "${kubectl[@]}" get serviceaccount default -n default
  wait_for kube-proxy "service rules" iptables -w -t nat -S KUBE-SERVICES
  "${kubectl[@]}" run ecrtest-smoke -n default --image="$PAUSE_IMAGE" --image-pull-policy=Never \
    --restart=Never --overrides='{"spec":{"terminationGracePeriodSeconds":0}}' >/dev/null
  wait_for kubelet "pause pod Running" node_pod_running "${kubectl[@]}"
  node_probe_up
  wait_for kube-proxy "https://10.0.0.1/readyz from netns $NODE_PROBE_NETNS" \
    ip netns exec "$NODE_PROBE_NETNS" curl -fsS --max-time 2 --cacert "$pki/ca.crt" https://10.0.0.1:443/readyz
  node_probe_down
  "${kubectl[@]}" delete pod ecrtest-smoke -n default --wait=true --timeout=30s >/dev/null
}

node_pod_running() {
  [[ $("$@" get pod ecrtest-smoke -n default -o jsonpath='{.status.phase}') == Running ]]
}

# A network namespace with a veth on the bridge and a route to the service CIDR only: a pod's
# view of the network, from which kube-proxy's DNAT of the kubernetes Service is checked.
node_probe_up() {
  ip netns add "$NODE_PROBE_NETNS"
  ip link add ecrtest-probe0 type veth peer name eth0 netns "$NODE_PROBE_NETNS"
  ip link set ecrtest-probe0 master "$NODE_BRIDGE" up
  ip netns exec "$NODE_PROBE_NETNS" ip link set lo up
  ip netns exec "$NODE_PROBE_NETNS" ip addr add "$NODE_PROBE_IP/24" dev eth0
  ip netns exec "$NODE_PROBE_NETNS" ip link set eth0 up
  ip netns exec "$NODE_PROBE_NETNS" ip route add "$SERVICE_CIDR" via "$NODE_IP"
}

node_probe_down() {
  ip link del ecrtest-probe0 2>/dev/null || true
  ip netns del "$NODE_PROBE_NETNS" 2>/dev/null || true
}

# node_overlay_works DIR: an overlay mount succeeds in DIR
node_overlay_works() {
  local t=$1/overlay-check rc=0
  mkdir -p "$t/lower" "$t/upper" "$t/work" "$t/merged"
  mount -t overlay overlay -o "lowerdir=$t/lower,upperdir=$t/upper,workdir=$t/work" "$t/merged" 2>/dev/null || rc=1
  if ((rc == 0)); then umount "$t/merged"; fi
  rm -rf "$t"
  return "$rc"
}

# node_teardown [DIR]: remove what a node environment made, by DIR (when given and still
# there) and by the fixed names. Safe to run when nothing is left.
node_teardown() {
  local dir=${1:-} pid other=""
  # A stale directory taken down while another node environment runs: only what is its own.
  if [[ -f $NODE_OWNER ]]; then other=$(cat "$NODE_OWNER"); fi
  if [[ -n $dir && -n $other && $other != "$dir" && -f $other/pids ]] && node_alive "$other"; then
    node_kill_matching "$dir" ""
    node_unmount_under "$dir"
    return 0
  fi
  if [[ -n $dir && -d $dir ]]; then
    # Containers: the processes in the pod cgroups, then the shims (their command line names
    # DIR's containerd socket), then containerd itself if it still runs.
    node_kill_cgroup_procs
    node_kill_matching "$dir" containerd-shim
    if [[ -f $dir/pids ]]; then
      pid=$(awk '$1 == "containerd" { print $2 }' "$dir/pids")
      if [[ -n $pid ]]; then stop_pid "$pid" "$dir"; fi
    fi
    node_kill_matching "$dir" ""
    node_unmount_under "$dir"
  else
    node_kill_cgroup_procs
  fi
  node_remove_cgroups
  node_remove_dead_shim_sockets
  node_probe_down
  # Paths fixed in the code whatever the configuration says: libcni's result cache, the
  # kubelet's device plugin socket and container log links, the netns directory of `ip netns`.
  if [[ -d /var/lib/cni/results ]]; then
    { grep -lZ '"netns":"/tmp/ecr-testenv\.' /var/lib/cni/results/* 2>/dev/null || true; } | xargs -0r rm -f --
  fi
  rm -f /var/lib/kubelet/device-plugins/kubelet.sock
  if [[ -n $dir && -d /var/log/containers ]]; then
    find /var/log/containers -maxdepth 1 -type l -lname "$dir/*" -delete 2>/dev/null || true
  fi
  # `ip netns add` made /run/netns a mount point of its own; undo that once it holds nothing.
  if [[ -d /run/netns ]] && [[ -z $(ls -A /run/netns) ]]; then
    if mountpoint -q /run/netns; then umount /run/netns 2>/dev/null || true; fi
  fi
  # mount(8) made /run/mount for its utab.
  rmdir /var/lib/cni/results /var/lib/cni /var/lib/kubelet/device-plugins /var/lib/kubelet \
    /var/log/containers /run/netns /run/mount 2>/dev/null || true
  node_iptables_clean
  ip link del "$NODE_BRIDGE" 2>/dev/null || true
  if [[ -n $dir && -f $dir/node-sysctls ]]; then
    local key val
    while read -r key val; do sysctl -qw "$key=$val" >/dev/null 2>&1 || true; done <"$dir/node-sysctls"
    rm -f "$dir/node-sysctls"
  fi
  if [[ -n $dir ]] && [[ ! -f $NODE_OWNER || $(cat "$NODE_OWNER") == "$dir" ]]; then rm -f "$NODE_OWNER"; fi
  if [[ -z $dir || ! -d $dir ]]; then rm -f "$NODE_OWNER"; fi
}

# Every process in a cgroup under /NODE_CGROUP gets SIGKILL (pod containers and pause).
node_kill_cgroup_procs() {
  local base=/sys/fs/cgroup/pids/$NODE_CGROUP f pid round
  [[ -d $base ]] || base=/sys/fs/cgroup/memory/$NODE_CGROUP
  [[ -d $base ]] || return 0
  for round in 1 2 3 4 5 6 7 8 9 10; do
    local any=""
    while IFS= read -r f; do
      while read -r pid; do
        [[ -n $pid ]] || continue
        any=1
        kill -KILL "$pid" 2>/dev/null || true
      done <"$f"
    done < <(find "$base" -name cgroup.procs 2>/dev/null)
    [[ -n $any ]] || return 0
    sleep 0.2
  done
}

# node_kill_matching DIR WORD: KILL processes whose command line names DIR (and WORD)
node_kill_matching() {
  local dir=$1 word=$2 p
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    [[ $p == "$$" || $p == "$BASHPID" ]] && continue
    [[ -r /proc/$p/cmdline ]] || continue
    local cmd
    cmd=$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null) || continue
    [[ $cmd == *"$dir/"* ]] || continue
    [[ -z $word || $cmd == *"$word"* ]] || continue
    # not this script, nor a shell running it
    [[ $cmd == *testenv.sh* ]] && continue
    kill -KILL "$p" 2>/dev/null || true
  done
}

# Unmount everything mounted under DIR (deepest first; lazily if busy).
node_unmount_under() {
  local dir=$1 m
  local -a mounts=()
  while IFS= read -r m; do mounts+=("$m"); done < <(
    awk -v d="$dir/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | awk '{ print length, $0 }' |
      sort -rn | cut -d' ' -f2-)
  for m in "${mounts[@]}"; do
    # mountinfo escapes spaces as \040; our paths have none.
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "could not unmount $m"
  done
}

# The kubelet's cgroupRoot must exist under every controller. A new cpuset cgroup has no CPUs
# or memory nodes until it is given its parent's.
node_make_cgroups() {
  local ctl
  for ctl in /sys/fs/cgroup/*/; do
    [[ -f ${ctl}cgroup.procs ]] || continue
    mkdir -p "$ctl$NODE_CGROUP"
    if [[ -f ${ctl}cpuset.cpus ]]; then
      cat "${ctl}cpuset.cpus" >"$ctl$NODE_CGROUP/cpuset.cpus"
      cat "${ctl}cpuset.mems" >"$ctl$NODE_CGROUP/cpuset.mems"
    fi
  done
}

# Remove /NODE_CGROUP under every controller, deepest first.
node_remove_cgroups() {
  local ctl d
  for ctl in /sys/fs/cgroup/*/; do
    [[ -d $ctl$NODE_CGROUP ]] || continue
    while IFS= read -r d; do
      rmdir "$d" 2>/dev/null || log "could not remove cgroup $d"
    done < <(find "$ctl$NODE_CGROUP" -depth -type d)
  done
}

# Shim sockets live in /run/containerd/s whatever containerd's state dir is; those of killed
# shims stay behind. Remove the ones nobody listens on.
node_remove_dead_shim_sockets() {
  local s=/run/containerd/s f listening
  [[ -d $s ]] || return 0
  listening=$(ss -xlH 2>/dev/null | awk '{ print $5 }')
  for f in "$s"/*; do
    [[ -S $f ]] || continue
    grep -qxF -- "$f" <<<"$listening" || rm -f -- "$f"
  done
  rmdir "$s" 2>/dev/null || true
  rmdir /run/containerd 2>/dev/null || true
}

# The chains kube-proxy, the kubelet, CNI's portmap and node_network_up made, in iptables and
# ip6tables: every KUBE-* and ECRTEST-* chain, the CNI-DN-* chains of our network, and portmap's shared CNI-HOSTPORT-* chains once no other network's rule is
# in them. First the rules that jump to those chains, then the chains.
node_iptables_clean() {
  local cmd table rules line chain
  if [[ -x $(kube_bin kube-proxy) ]]; then
    "$(kube_bin kube-proxy)" --cleanup >/dev/null 2>&1 || true
  fi
  for cmd in iptables ip6tables; do
    command -v "$cmd" >/dev/null || continue
    for table in filter nat mangle raw; do
      rules=$("$cmd-save" -t "$table" 2>/dev/null) || continue
      local -A ours=()
      while IFS= read -r chain; do ours[$chain]=1; done < <(
        awk '/^:(KUBE-|ECRTEST-)/ { print substr($1, 2) }' <<<"$rules"
        # portmap's per-pod chains: the jumps to them carry the network's name; their DNAT
        # rules point into our pod CIDR (enough once the jump is gone)
        grep -E 'name: \\"ecrtest\\"' <<<"$rules" | sed -nE 's/.* -j (CNI-DN-[^ ]+).*/\1/p'
        grep -E "^-A CNI-DN-[^ ]+ .*--to-destination ${POD_CIDR%.*}\\." <<<"$rules" | awk '{ print $2 }')
      # portmap's shared chains are ours to remove when only our rules use them
      if grep -q '^:CNI-HOSTPORT-DNAT' <<<"$rules" &&
        ! grep -E '^-A CNI-HOSTPORT-DNAT ' <<<"$rules" | grep >/dev/null -v 'name: \\"ecrtest\\"'; then
        while IFS= read -r chain; do ours[$chain]=1; done < <(awk '/^:CNI-HOSTPORT-/ { print substr($1, 2) }' <<<"$rules")
      fi
      ((${#ours[@]} > 0)) || continue
      while IFS= read -r line; do
        local from target
        from=$(awk '{ print $2 }' <<<"$line")
        target=$(sed -nE 's/.* -[jg] ([^ ]+).*/\1/p' <<<"$line")
        [[ -n $target && -n $from ]] || continue
        [[ -n ${ours[$target]:-} && -z ${ours[$from]:-} ]] || continue
        # the rule as iptables-save printed it, quotes and all
        eval "\"\$cmd\" -w -t \"\$table\" -D ${line#-A }" 2>/dev/null || log "could not delete $cmd -t $table $line"
      done < <(grep -E '^-A .* -[jg] (KUBE-|ECRTEST-|CNI-)' <<<"$rules")
      for chain in "${!ours[@]}"; do "$cmd" -w -t "$table" -F "$chain" 2>/dev/null || true; done
      for chain in "${!ours[@]}"; do "$cmd" -w -t "$table" -X "$chain" 2>/dev/null || log "could not delete chain $chain ($cmd -t $table)"; done
      unset ours
    done
  done
}

# ---------------------------------------------------------------- down

# belongs PID DIR: PID is alive and its command line names DIR (guards against pid reuse)
belongs() {
  local pid=$1 dir=$2
  [[ -r /proc/$pid/cmdline ]] || return 1
  tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep >/dev/null -F -- "$dir"
}

# stop_pid PID DIR: TERM, then KILL after STOP_TIMEOUT
stop_pid() {
  local pid=$1 dir=$2 deadline
  belongs "$pid" "$dir" || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  deadline=$(($(now) + STOP_TIMEOUT))
  while belongs "$pid" "$dir"; do
    if (($(now) >= deadline)); then
      log "pid $pid still running ${STOP_TIMEOUT}s after TERM; sending KILL"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.1
  done
}

# is_zombie PID
is_zombie() { [[ $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) == Z ]]; }

# stop_dir DIR [keep]: stop everything listed in DIR/pids, last started first
# (so kube-apiserver goes before etcd: without etcd it hangs in shutdown), then
# remove DIR unless told to keep it.
stop_dir() {
  local dir=$1 keep=${2:-} name pid p
  local -a pids=()
  if [[ -f $dir/pids ]]; then
    while read -r name pid; do
      if [[ $pid =~ ^[0-9]+$ ]]; then pids=("$pid" "${pids[@]}"); fi
    done <"$dir/pids"
  fi
  for p in "${pids[@]}"; do
    stop_pid "$p" "$dir"
  done
  # They are dead. Their parent is init once `up` has exited; give it a moment
  # to reap them, so that `ps` right after `down` shows no <defunct> entries
  # (some inits, this sandbox's among them, reap only every second or two).
  local deadline
  deadline=$(($(now) + 3))
  for p in "${pids[@]}"; do
    while is_zombie "$p" && (($(now) < deadline)); do sleep 0.05; done
  done
  # Containers, mounts, cgroups, iptables rules, the bridge: before the directory goes.
  if [[ -f $dir/node ]]; then node_teardown "$dir"; fi
  if [[ -z $keep ]]; then rm -rf -- "$dir"; fi
}

cmd_down() {
  local dir=${1:-${TESTENV_DIR:-}}
  [[ -n $dir ]] || die "down: no directory given and TESTENV_DIR is not set"
  if [[ ! -d $dir ]]; then
    log "down: $dir does not exist; nothing to do"
    return 0
  fi
  dir=$(cd -- "$dir" && pwd -P)
  [[ -f $dir/.ecr-testenv ]] || die "down: $dir is not a testenv directory"
  stop_dir "$dir"
  log "stopped and removed $dir"
}

# ---------------------------------------------------------------- run

cmd_run() {
  local node=""
  if [[ ${1:-} == --node ]]; then node=1; shift; fi
  if [[ ${1:-} == -- ]]; then shift; fi
  (($# > 0)) || die "run: no command given (usage: run [--node] -- CMD ARGS...)"
  local env_lines
  env_lines=$("$SCRIPT_PATH" up ${node:+--node})
  eval "$env_lines"
  # The environment lives as long as this run: a killed run leaves it behind.
  printf '%s\n' "$$" >"$TESTENV_DIR/run.pid"
  trap '"$SCRIPT_PATH" down "$TESTENV_DIR" || true' EXIT
  # The command runs as a child we wait for, so that a signal sent to this
  # script is handled at once (passed on to the command) instead of after the
  # command ends. It keeps stdin and gets SIGINT/SIGQUIT back to default
  # (bash ignores them in background children).
  (
    trap - INT QUIT
    exec "$@"
  ) <&0 &
  RUN_CHILD=$!
  trap 'kill -INT "$RUN_CHILD" 2>/dev/null || true' INT
  trap 'kill -TERM "$RUN_CHILD" 2>/dev/null || true' TERM HUP
  local rc
  while :; do
    rc=0
    wait "$RUN_CHILD" || rc=$?
    # wait also returns (>128) when a trapped signal arrives; go on waiting
    # until the command itself has ended.
    kill -0 "$RUN_CHILD" 2>/dev/null || break
  done
  exit "$rc"
}

# ---------------------------------------------------------------- user

cmd_user() {
  local name=${1:-}
  [[ -n $name ]] || die "user: usage: user NAME [GROUP...]"
  shift
  [[ -n ${TESTENV_DIR:-} && -f $TESTENV_DIR/pki/ca.key ]] || die "user: TESTENV_DIR is not set to a running testenv"
  [[ $name =~ ^[A-Za-z0-9:._@-]+$ ]] || die "user: bad NAME $name"
  TESTENV_DIR_=$TESTENV_DIR
  local subj="/CN=$name" g
  for g in "$@"; do
    [[ $g =~ ^[A-Za-z0-9:._@-]+$ ]] || die "user: bad GROUP $g"
    subj+="/O=$g"
  done
  local users=$TESTENV_DIR/users
  mkdir -p "$users"
  sign "$TESTENV_DIR/pki" "$users" "$name" "$subj" "$TESTENV_DIR/pki/client.ext"
  write_kubeconfig "$users/$name.kubeconfig" "$name" "$users/$name.crt" "$users/$name.key"
  printf '%s\n' "$users/$name.kubeconfig"
}

# ---------------------------------------------------------------- registry-hosts

# containerd's registry host configuration (its `config_path`, ctr's --hosts-dir): for every
# registry host, CERTS_D/<host>/hosts.toml sends pulls to the emulator's listener, trusting the
# test CA. The emulator is the `server` itself, not a mirror in front of the real ECR, so a
# refused pull never falls through to the internet.
cmd_registry_hosts() {
  local certs_d=${1:-}
  [[ -n $certs_d ]] || die "registry-hosts: usage: registry-hosts CERTS_D"
  [[ -n ${ECR_REGISTRY_HOSTS:-} && -f ${ECR_REGISTRY_CA:-} ]] ||
    die "registry-hosts: ECR_REGISTRY_HOSTS and ECR_REGISTRY_CA are not set (eval \"\$(tests/testenv.sh up)\" first)"
  local pair host addr
  for pair in $ECR_REGISTRY_HOSTS; do
    host=${pair%%=*} addr=${pair#*=}
    mkdir -p "$certs_d/$host"
    printf '%s\n' \
      "# Written by tests/testenv.sh registry-hosts: $host is the ECR registry emulator." \
      "server = \"https://$addr\"" \
      "ca = \"$ECR_REGISTRY_CA\"" \
      'capabilities = ["pull", "resolve"]' >"$certs_d/$host/hosts.toml.tmp"
    mv "$certs_d/$host/hosts.toml.tmp" "$certs_d/$host/hosts.toml"
    printf '%s\n' "$certs_d/$host/hosts.toml"
  done
}

# ---------------------------------------------------------------- import-image

# import-image TAR...: load OCI or docker archives into the node's containerd (namespace k8s.io,
# where the kubelet looks), so pods run them with imagePullPolicy Never or IfNotPresent.
cmd_import_image() {
  (($# > 0)) || die "import-image: usage: import-image TAR..."
  [[ -n ${TESTENV_DIR:-} && -x $TESTENV_DIR/bin/ctr ]] ||
    die "import-image: TESTENV_DIR is not set to a running testenv started with up --node"
  local tar snapshotter
  snapshotter=$(awk -F'"' '/^  snapshotter = / { print $2; exit }' "$TESTENV_DIR/containerd/config.toml")
  for tar in "$@"; do
    [[ -f $tar ]] || die "import-image: no such file $tar"
    "$TESTENV_DIR/bin/ctr" images import --snapshotter "$snapshotter" "$tar" >&2 ||
      die "import-image: ctr images import $tar failed"
  done
}

# ---------------------------------------------------------------- main

main() {
  local cmd=${1:-}
  if (($# > 0)); then shift; fi
  case $cmd in
    build) cmd_build "$@" ;;
    venv) venv_dir && echo ;;
    helm) echo "$HELM_BIN" ;;
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    run) cmd_run "$@" ;;
    import-image) cmd_import_image "$@" ;;
    user) cmd_user "$@" ;;
    registry-hosts) cmd_registry_hosts "$@" ;;
    -h | --help | help) usage ;;
    *)
      usage
      exit 2
      ;;
  esac
}

# One line, so an edit of this file while it runs cannot feed bash new text.
main "$@"; exit
