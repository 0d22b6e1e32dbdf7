#!/usr/bin/env bash
# Real test environment for ecr-pull-secrets: kube-apiserver + etcd built from
# the Go module proxy, the ECR emulator (moto wrapped by
# tests/ecr-emulator/server.py) and the ECR registry emulator
# (tests/ecr-registry, serving a seeded test image), all on 127.0.0.1.
#
#   tests/testenv.sh build               build and cache binaries and the venv
#   eval "$(tests/testenv.sh up)"        start everything, export its settings
#   tests/testenv.sh down [DIR]          stop what `up` started, remove DIR
#   tests/testenv.sh run -- CMD ARGS...  up, run CMD, always down; CMD's exit code
#   tests/testenv.sh user NAME [GROUP...] kubeconfig for a client-cert user
#   tests/testenv.sh venv                path of the emulator's venv (made by build)
#   tests/testenv.sh helm                path of the helm binary (made by build)
#   tests/testenv.sh registry-hosts CERTS_D  containerd hosts.toml files under
#                                        CERTS_D for the registry emulator's hosts
#                                        (needs the variables `up` exports)
#
# Everything built lives outside the repo, in
#   ${ECR_PULL_SECRETS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ecr-pull-secrets}
# Versions: KUBE_VERSION (default v1.36.3), ETCD_VERSION (default v3.6.16),
# HELM_VERSION (default v3.22.0).
# `up` prints only `export` lines on stdout; diagnostics go to stderr. Its
# directory, /tmp/ecr-testenv.XXXXXX, holds the PKI, the process logs
# (etcd.log, kube-apiserver.log, ecr-emulator.log, ecr-registry.log), pids and
# users/.
# Other settings: TESTENV_AWS_REGION (us-east-1), TESTENV_START_TIMEOUT (60 s
# per component), TESTENV_STOP_TIMEOUT (10 s per process before KILL),
# TESTENV_ADVERTISE_ADDRESS (default: a non-loopback IPv4 of this machine, else
# 10.0.0.1), TESTENV_KEEP_ON_FAILURE=1 (keep the directory when `up` fails),
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

build_kube() {
  local ver=$KUBE_VERSION
  local minor staging_ver wrapper gomod old new ldflags
  [[ $ver =~ ^v1\.([0-9]+)\.([0-9]+)(-.*)?$ ]] || die "KUBE_VERSION must look like v1.X.Y, got $ver"
  minor=${BASH_REMATCH[1]}
  staging_ver="v0.${minor}.${BASH_REMATCH[2]}${BASH_REMATCH[3]}"
  wrapper="$CACHE/src/kube-$ver"
  log "building kube-apiserver and kubectl $ver (wrapper module $wrapper)"
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
  (cd "$wrapper" &&
    go get -tool "k8s.io/kubernetes/cmd/kube-apiserver@$ver" "k8s.io/kubernetes/cmd/kubectl@$ver" >&2)
  local v=k8s.io/component-base/version cv=k8s.io/client-go/pkg/version date
  date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  ldflags="-s -w"
  local p
  for p in "$v" "$cv"; do
    ldflags+=" -X $p.gitVersion=$ver -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=$date"
  done
  mkdir -p "$CACHE/bin"
  (cd "$wrapper" &&
    CGO_ENABLED=0 go build -trimpath -ldflags="$ldflags" -o "$KUBE_APISERVER_BIN.tmp" k8s.io/kubernetes/cmd/kube-apiserver >&2 &&
    CGO_ENABLED=0 go build -trimpath -ldflags="$ldflags" -o "$KUBECTL_BIN.tmp" k8s.io/kubernetes/cmd/kubectl >&2)
  mv -f "$KUBE_APISERVER_BIN.tmp" "$KUBE_APISERVER_BIN"
  mv -f "$KUBECTL_BIN.tmp" "$KUBECTL_BIN"
  log "built $KUBE_APISERVER_BIN and $KUBECTL_BIN"
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
  local start tool
  start=$(now)
  for tool in go jq python3 flock; do
    command -v "$tool" >/dev/null || die "$tool is required to build"
  done
  mkdir -p "$CACHE"
  exec 9>"$CACHE/.build.lock"
  flock 9
  if [[ -x $KUBE_APISERVER_BIN && -x $KUBECTL_BIN ]]; then
    log "kube-apiserver and kubectl $KUBE_VERSION: cached"
  else
    build_kube
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
    ip=$(ip -4 -o addr show scope global 2>/dev/null | awk '{split($4, a, "/"); print a[1]; exit}')
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
subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.0.0.1
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
  if ! built; then
    log "build artifacts missing in $CACHE; running build first"
    cmd_build >&2
  fi
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
  log "dir $dir"

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
  printf 'https://127.0.0.1:%s\n' "$api_port" >"$dir/apiserver-url"
  printf 'http://127.0.0.1:%s\n' "$ecr_port" >"$dir/ecr-url"

  make_pki "$dir/pki"
  local pki=$dir/pki
  local san="IP:127.0.0.1,DNS:localhost" h
  for h in "${registry_hosts[@]}"; do san+=",DNS:$h"; done
  sed "s/^subjectAltName=.*/subjectAltName=$san/" "$pki/serving.ext" >"$pki/registry.ext"
  sign "$pki" "$pki" registry "/CN=ecr-registry" "$pki/registry.ext"

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
    --host 127.0.0.1 --port "$ecr_port" \
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
    --bind-address=127.0.0.1 \
    --secure-port="$api_port" \
    --advertise-address="$adv" \
    --endpoint-reconciler-type=none \
    --cert-dir="$dir/apiserver-certs" \
    --tls-cert-file="$pki/apiserver.crt" \
    --tls-private-key-file="$pki/apiserver.key" \
    --client-ca-file="$pki/ca.crt" \
    --service-account-issuer=https://kubernetes.default.svc \
    --service-account-key-file="$pki/sa.pub" \
    --service-account-signing-key-file="$pki/sa.key" \
    --service-cluster-ip-range=10.0.0.0/24 \
    --authorization-mode=RBAC \
    --disable-admission-plugins=ServiceAccount

  write_kubeconfig "$dir/admin.kubeconfig" admin "$pki/admin.crt" "$pki/admin.key"
  mkdir -p "$dir/bin" "$dir/users"
  ln -s "$KUBECTL_BIN" "$dir/bin/kubectl"
  ln -s "$HELM_BIN" "$dir/bin/helm"

  wait_for kube-apiserver "/readyz ok" curl -fsS --max-time 5 \
    --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
    "https://127.0.0.1:$api_port/readyz"
  wait_for ecr-emulator "healthy" curl -fsS --max-time 2 "http://127.0.0.1:$ecr_port/_emulator/health"
  wait_for ecr-registry "listening" test -s "$dir/ecr-registry.json"
  # Unauthenticated, the registry answers 401 with ECR's basic challenge.
  wait_for ecr-registry "401 without credentials" registry_challenges "$pki/ca.crt" "${registry_ports[0]}"

  local registry_list="" image_digest
  for i in "${!registry_hosts[@]}"; do
    registry_list+="${registry_list:+ }${registry_hosts[$i]}=127.0.0.1:${registry_ports[$i]}"
  done
  image_digest=$(cat "$rdir/digest")

  local key val
  {
    for key in KUBECONFIG AWS_ENDPOINT_URL_ECR AWS_ENDPOINT_URL_STS AWS_ENDPOINT_URL_ECR_PUBLIC \
      AWS_REGION AWS_DEFAULT_REGION AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_EC2_METADATA_DISABLED \
      ECR_EMULATOR_CONTROL ECR_EMULATOR_CALLS ECR_EMULATOR_LOG ECR_REGISTRY_CA ECR_REGISTRY_HOSTS \
      ECR_REGISTRY_HOST ECR_REGISTRY_ADDRESS ECR_REGISTRY_IMAGE ECR_REGISTRY_IMAGE_DIGEST TESTENV_DIR; do
      case $key in
        KUBECONFIG) val="$dir/admin.kubeconfig" ;;
        AWS_ENDPOINT_URL_*) val="http://127.0.0.1:$ecr_port" ;;
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
  } >"$dir/env"
  trap - EXIT INT TERM
  log "ready: apiserver https://127.0.0.1:$api_port, etcd 127.0.0.1:$etcd_port, ECR emulator http://127.0.0.1:$ecr_port, ECR registries $registry_list (advertise-address $adv)"
  cat "$dir/env"
}

# ---------------------------------------------------------------- down

# belongs PID DIR: PID is alive and its command line names DIR (guards against pid reuse)
belongs() {
  local pid=$1 dir=$2
  [[ -r /proc/$pid/cmdline ]] || return 1
  tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$dir"
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
  if [[ ${1:-} == -- ]]; then shift; fi
  (($# > 0)) || die "run: no command given (usage: run -- CMD ARGS...)"
  local env_lines
  env_lines=$("$SCRIPT_PATH" up)
  eval "$env_lines"
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
