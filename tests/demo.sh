#!/usr/bin/env bash
# `make demo`: a real kube-apiserver + etcd and the ECR emulator on 127.0.0.1, the controller
# running against them, a few namespaces, and each secret's registries and expiry (never the
# token). Ctrl-C stops everything. DEMO_DURATION=N stops after N seconds (used by `make test`).
set -euo pipefail
cd "$(dirname "$0")/.."

DEMO_TTL=${DEMO_TTL:-60}
DEMO_DURATION=${DEMO_DURATION:-}

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

tests/install-deps.sh
say "building the controller and the test environment (cached after the first run)"
cargo build --locked --quiet
tests/testenv.sh build

say "starting kube-apiserver, etcd and the ECR emulator"
exports=$(tests/testenv.sh up)
eval "$exports"
controller_pid=
cleanup() {
  trap - EXIT INT TERM
  if [[ -n $controller_pid ]]; then
    say "stopping the controllers (SIGTERM)"
    for pid in $controller_pid; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in $controller_pid; do
      wait "$pid" && echo "pid $pid exited 0" || echo "pid $pid exited $?"
    done
  fi
  tests/testenv.sh down "$TESTENV_DIR"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

# Short tokens so refreshes are visible: the controller refreshes half-way through.
printf '{"ttl_seconds": %d}\n' "$DEMO_TTL" >"$ECR_EMULATOR_CONTROL"
for ns in team-a team-b team-c skipped; do kubectl create namespace "$ns" >/dev/null; done
echo "namespaces: team-a team-b team-c skipped (excluded)"
# A second pull secret, declared as an EcrPullSecret resource: another region, team-* only.
kubectl apply --server-side -f deploy/crd/ecrpullsecrets.yaml >/dev/null
kubectl wait --for=condition=Established crd/ecrpullsecrets.ecr-pull-secrets.io --timeout=30s >/dev/null
kubectl apply -f - >/dev/null <<'YAML'
apiVersion: ecr-pull-secrets.io/v1alpha1
kind: EcrPullSecret
metadata:
  name: teams-eu
spec:
  secretName: ecr-pull-secret-eu
  registries:
    - accountId: "123456789012"
      region: eu-west-1
  namespaces:
    include: [team-*]
YAML
echo "EcrPullSecret teams-eu: Secret ecr-pull-secret-eu (eu-west-1) in team-* namespaces"

say "starting two controller replicas (they elect a leader through a Lease)"
bin="${CARGO_TARGET_DIR:-target}/debug/ecr-pull-secrets"
pids=()
for r in 1 2; do
  log=$TESTENV_DIR/controller-$r.log
  "$bin" run --identity "replica-$r" --admin-address 127.0.0.1:0 \
    --exclude-namespaces skipped,kube-node-lease --resources >"$log" 2>&1 &
  pids+=($!)
  echo "replica-$r: pid $!, log $log"
done
controller_pid="${pids[*]}"

show() {
  kubectl get secrets -A -l app.kubernetes.io/managed-by=ecr-pull-secrets \
    -o custom-columns='NAMESPACE:.metadata.namespace,SECRET:.metadata.name,REGISTRIES:.metadata.annotations.ecr-pull-secrets\.io/registries,EXPIRES:.metadata.annotations.ecr-pull-secrets\.io/expires-at,TYPE:.type'
  kubectl get ecrpullsecrets
  echo "AWS GetAuthorizationToken calls so far: $(cat "$ECR_EMULATOR_CALLS")"
  echo "leader: $(kubectl get lease ecr-pull-secrets -n default -o jsonpath='{.spec.holderIdentity}')"
}

alive() {
  local pid
  for pid in $controller_pid; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$TESTENV_DIR"/controller-*.log >&2
      echo "a controller died" >&2
      return 1
    fi
  done
}

deadline=$((SECONDS + 60))
until kubectl get secret ecr-pull-secret -n team-c >/dev/null 2>&1 &&
  kubectl get secret ecr-pull-secret-eu -n team-c >/dev/null 2>&1; do
  alive || exit 1
  ((SECONDS < deadline)) || { tail -n 20 "$TESTENV_DIR"/controller-*.log; echo "no secret after 60 s" >&2; exit 1; }
  sleep 0.2
done
kubectl wait --for=condition=Ready ecrpullsecret/teams-eu --timeout=30s >/dev/null
say "secrets written"
show

say "creating namespace team-new while the controller runs"
kubectl create namespace team-new >/dev/null
start=$(date +%s%N)
until kubectl get secret ecr-pull-secret -n team-new >/dev/null 2>&1 &&
  kubectl get secret ecr-pull-secret-eu -n team-new >/dev/null 2>&1; do
  (($(date +%s%N) - start < 10000000000)) || { echo "team-new got no secret" >&2; exit 1; }
done
echo "team-new has both secrets after $((($(date +%s%N) - start) / 1000000)) ms"
if kubectl get secret ecr-pull-secret -n skipped >/dev/null 2>&1; then
  echo "excluded namespace got a secret" >&2
  exit 1
fi
echo "namespace 'skipped' is excluded and has no secret"

say "watching (tokens live ${DEMO_TTL}s and are refreshed about half-way); Ctrl-C to stop"
end=$((SECONDS + ${DEMO_DURATION:-31536000}))
while ((SECONDS < end)); do
  alive || exit 1
  sleep "$((end - SECONDS < 15 ? (end - SECONDS > 0 ? end - SECONDS : 1) : 15))"
  echo
  date -u +%H:%M:%S
  show
done
