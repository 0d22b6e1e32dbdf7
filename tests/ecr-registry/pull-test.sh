#!/usr/bin/env bash
# A real client pulls the seeded image from the ECR registry emulator with a password the ECR
# emulator just issued, and is refused without one, with a never-issued, an expired and another
# region's password. Runs inside the test environment:
#
#   tests/testenv.sh run -- tests/ecr-registry/pull-test.sh
#
# The client is skopeo (Debian), talking to the listener address. When containerd and ctr are
# available (CONTAINERD_BIN and CTR_BIN, else the cache's containerd-v*/bin, else PATH), the
# same pull also goes through containerd with the hosts.toml of `tests/testenv.sh
# registry-hosts`, under the real ECR host name, as the kubelet's pulls will.
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
TESTENV="$SCRIPT_DIR/../testenv.sh"
: "${ECR_REGISTRY_HOSTS:?run me with tests/testenv.sh run -- $0}"

log() { printf 'pull-test: %s\n' "$*" >&2; }
fail() { log "FAIL: $*"; exit 1; }

work=$(mktemp -d /tmp/ecr-pull-test.XXXXXX)
cleanup() {
  if [[ -n ${CONTAINERD_PID:-} ]]; then
    kill -TERM "$CONTAINERD_PID" 2>/dev/null || true
    wait "$CONTAINERD_PID" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

python=$("$TESTENV" venv)/bin/python

# password REGION [TTL]: a fresh ECR token's password, from the ECR emulator via boto3
password() {
  local region=$1 ttl=${2:-}
  if [[ -n $ttl ]]; then
    printf '{"ttl_seconds": %s}\n' "$ttl" >"$ECR_EMULATOR_CONTROL.tmp"
    mv "$ECR_EMULATOR_CONTROL.tmp" "$ECR_EMULATOR_CONTROL"
  fi
  "$python" - "$region" <<'EOF'
import base64, sys, boto3
token = boto3.client("ecr", region_name=sys.argv[1]).get_authorization_token()
user, password = base64.b64decode(token["authorizationData"][0]["authorizationToken"]).decode().split(":", 1)
assert user == "AWS", user
print(password)
EOF
  if [[ -n $ttl ]]; then rm -f "$ECR_EMULATOR_CONTROL"; fi
}

address_of() {
  local pair
  for pair in $ECR_REGISTRY_HOSTS; do
    if [[ ${pair%%=*} == "$1" ]]; then printf '%s' "${pair#*=}"; return; fi
  done
  fail "no address for $1 in ECR_REGISTRY_HOSTS=$ECR_REGISTRY_HOSTS"
}

host=$ECR_REGISTRY_HOST
region=$(cut -d. -f4 <<<"$host")
other_host=""
for pair in $ECR_REGISTRY_HOSTS; do
  [[ ${pair%%=*} != "$host" ]] && other_host=${pair%%=*} && break
done
[[ -n $other_host ]] || fail "need two registry hosts (two regions), have $ECR_REGISTRY_HOSTS"
other_region=$(cut -d. -f4 <<<"$other_host")
repo_tag=${ECR_REGISTRY_IMAGE#*/}
mkdir -p "$work/certs"
cp "$ECR_REGISTRY_CA" "$work/certs/ca.crt"

# skopeo_pull ADDRESS [CREDS]: copy the image to an OCI layout; output to $work/skopeo.out
skopeo_pull() {
  local address=$1 creds=${2:-} dest
  dest="$work/pulled-$RANDOM"
  local -a auth=(--src-no-creds)
  [[ -z $creds ]] || auth=(--src-creds "$creds")
  skopeo copy --quiet --retry-times 0 "${auth[@]}" --src-cert-dir "$work/certs" \
    "docker://$address/$repo_tag" "oci:$dest:pulled" >"$work/skopeo.out" 2>&1 || return 1
  PULLED=$dest
}

# refused WHAT ADDRESS CREDS REASON: the pull fails with 401 and the registry says REASON
refused() {
  local what=$1 address=$2 creds=$3 reason=$4
  if skopeo_pull "$address" "$creds"; then
    fail "$what: the pull succeeded, want it refused"
  fi
  grep -qiE 'unauthorized|401|authentication required' "$work/skopeo.out" ||
    fail "$what: refused, but not as unauthorized: $(cat "$work/skopeo.out")"
  grep -qF "$reason" "$work/skopeo.out" || grep -qF "$reason" "$TESTENV_DIR/ecr-registry.log" ||
    fail "$what: neither skopeo nor the registry log says '$reason': $(cat "$work/skopeo.out")"
  log "ok: $what refused ($reason)"
}

addr=$(address_of "$host")
valid=$(password "$region")

# The pull: the manifest's digest is the seeded one, every blob matches its digest (skopeo checks).
skopeo_pull "$addr" "AWS:$valid" || fail "pull with a fresh $region password: $(cat "$work/skopeo.out")"
got=$(jq -r '.manifests[0].digest' "$PULLED/index.json")
[[ $got == "$ECR_REGISTRY_IMAGE_DIGEST" ]] || fail "pulled manifest $got, seeded $ECR_REGISTRY_IMAGE_DIGEST"
log "ok: skopeo pulled $ECR_REGISTRY_IMAGE ($got) from $addr with a fresh $region password"

refused "no credentials" "$addr" "" "no basic credentials"
refused "a never-issued password" "$addr" "AWS:emu-$(openssl rand -hex 16)-1" "never issued"
refused "user other than AWS" "$addr" "admin:$valid" "is not AWS"
other=$(password "$other_region")
refused "a $other_region password at the $region registry" "$addr" "AWS:$other" "issued for region $other_region"
skopeo_pull "$(address_of "$other_host")" "AWS:$other" || fail "the $other_region password at its own registry: $(cat "$work/skopeo.out")"
log "ok: the $other_region password pulls from the $other_region registry"

short=$(password "$region" 3)
skopeo_pull "$addr" "AWS:$short" || fail "a 3 s password right away: $(cat "$work/skopeo.out")"
sleep 3.2
refused "the same password after its 3 s" "$addr" "AWS:$short" "expired at"

# ---- containerd, through hosts.toml, under the ECR host name (when available)
# The node's containerd build (tests/testenv.sh on the node branch) lives in the cache.
cache=${ECR_PULL_SECRETS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ecr-pull-secrets}
cached_bin=$(find "$cache" -maxdepth 3 -path '*/containerd-v*/bin/containerd' 2>/dev/null | sort -V | tail -n1)
containerd_bin=${CONTAINERD_BIN:-${cached_bin:-$(command -v containerd || true)}}
ctr_bin=${CTR_BIN:-${cached_bin:+${cached_bin%/containerd}/ctr}}
ctr_bin=${ctr_bin:-$(command -v ctr || true)}
if [[ -z $containerd_bin || -z $ctr_bin ]]; then
  log "SKIPPED containerd pull: no containerd/ctr (set CONTAINERD_BIN and CTR_BIN)"
  exit 0
fi
certs_d="$work/certs.d"
"$TESTENV" registry-hosts "$certs_d" >/dev/null
root="$work/containerd"
mkdir -p "$root"
sock="$root/containerd.sock"
printf 'version = 3\nroot = "%s/root"\nstate = "%s/state"\n[grpc]\n  address = "%s"\n' "$root" "$root" "$sock" >"$root/config.toml"
"$containerd_bin" --config "$root/config.toml" >"$root/containerd.log" 2>&1 &
CONTAINERD_PID=$!
for _ in $(seq 100); do [[ -S $sock ]] && break; sleep 0.1; done
[[ -S $sock ]] || fail "containerd did not start: $(tail -20 "$root/containerd.log")"
ctr_() { "$ctr_bin" --address "$sock" --namespace ecr-pull-test "$@"; }

ctr_ content fetch --hosts-dir "$certs_d" --user "AWS:$(password "$region")" "$ECR_REGISTRY_IMAGE" >"$work/ctr.out" 2>&1 ||
  fail "containerd fetch of $ECR_REGISTRY_IMAGE: $(cat "$work/ctr.out")"
grep -q "ns=$host" "$TESTENV_DIR/ecr-registry.log" || fail "containerd did not name $host in ns="
log "ok: containerd fetched $ECR_REGISTRY_IMAGE through $certs_d/$host/hosts.toml"
if ctr_ content fetch --hosts-dir "$certs_d" --user "AWS:$other" "$ECR_REGISTRY_IMAGE" >"$work/ctr.out" 2>&1; then
  fail "containerd fetch with a $other_region password succeeded"
fi
grep -qiE 'unauthorized|401' "$work/ctr.out" || fail "containerd refused, but not as unauthorized: $(cat "$work/ctr.out")"
log "ok: containerd refused with a $other_region password"
