#!/usr/bin/env bash
# The test environment's node (`tests/testenv.sh up --node`): the Node is Ready, a pause pod
# runs (on the locally built pause image, never pulled), pods get the kubernetes Service
# through kube-proxy, an imported image is listed; `down` leaves no process, mount, bridge,
# network namespace, iptables chain or cgroup behind; and `up --node` after a run killed
# without `down`, or after an `up` killed half-way, starts clean. Needs root (bridges, iptables,
# mounts, cgroups).
set -euo pipefail
# Under pipefail, `producer | grep -q` fails when grep exits at the first match and the producer
# then dies of SIGPIPE; so pipes end in `grep >/dev/null`, which reads all of its input.
cd "$(dirname "$0")/.."

passed=0
fail() { echo "testenv-node-selftest: FAIL: $*" >&2; exit 1; }
pass() { passed=$((passed + 1)); echo "testenv-node-selftest: ok: $*" >&2; }

# check_clean PIDS: nothing of a node environment is left
check_clean() {
  local pids=$1 pid
  for pid in $pids; do
    if [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep >/dev/null -F "$dir"; then
      fail "process $pid of the testenv still runs after down"
    fi
  done
  for pid in /proc/[0-9]*; do
    if { tr '\0' ' ' <"$pid/cmdline"; } 2>/dev/null | grep >/dev/null -F "$dir/"; then
      fail "process ${pid#/proc/} ($(tr '\0' ' ' <"$pid/cmdline")) still names $dir"
    fi
  done
  ! grep -qF " $dir/" /proc/self/mountinfo || fail "mounts under $dir left: $(grep -F " $dir/" /proc/self/mountinfo | head -3)"
  [[ ! -d $dir ]] || fail "$dir still exists after down"
  ! ip link show ecrtest0 >/dev/null 2>&1 || fail "bridge ecrtest0 left"
  ! ip -o link | grep >/dev/null -E 'veth|ecrtest' || fail "links left: $(ip -o link | grep -E 'veth|ecrtest')"
  ! ip netns list 2>/dev/null | grep >/dev/null -E 'ecrtest|cni-' || fail "network namespaces left: $(ip netns list)"
  local cmd
  for cmd in iptables-save ip6tables-save; do
    if "$cmd" 2>/dev/null | grep >/dev/null -E '(KUBE-|CNI-|ECRTEST-)'; then
      fail "$cmd still shows: $("$cmd" | grep -E '(KUBE-|CNI-|ECRTEST-)' | head -5)"
    fi
  done
  ! compgen -G '/sys/fs/cgroup/*/ecrtest-node' >/dev/null || fail "cgroups left: $(compgen -G '/sys/fs/cgroup/*/ecrtest-node')"
  [[ ! -e /run/ecr-testenv-node ]] || fail "/run/ecr-testenv-node left"
  ! grep -rqs '/tmp/ecr-testenv\.' /var/lib/cni/results || fail "CNI result cache entries left in /var/lib/cni/results"
  [[ ! -e /var/lib/kubelet/device-plugins/kubelet.sock ]] || fail "kubelet's device plugin socket left"
  ! find /var/log/containers -maxdepth 1 -lname '/tmp/ecr-testenv.*' 2>/dev/null | grep >/dev/null . || fail "container log links left"
  ! compgen -G '/run/containerd/s/*' >/dev/null || fail "shim sockets left in /run/containerd/s"
}

exports=$(tests/testenv.sh up --node)
eval "$exports"
dir=$TESTENV_DIR
trap 'tests/testenv.sh down "$dir" >/dev/null 2>&1 || true' EXIT

[[ $(kubectl get node "$TESTENV_NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}') == True ]] ||
  fail "node $TESTENV_NODE_NAME is not Ready"
pass "node $TESTENV_NODE_NAME Ready"

kubectl create namespace selftest >/dev/null
kubectl get serviceaccount default -n selftest >/dev/null 2>&1 ||
  kubectl wait --for=create serviceaccount/default -n selftest --timeout=60s >/dev/null ||
  fail "no default ServiceAccount in a new namespace (token controller)"
kubectl run pause -n selftest --image="$TESTENV_PAUSE_IMAGE" --image-pull-policy=Never --restart=Never >/dev/null
kubectl wait --for=jsonpath='{.status.phase}'=Running pod/pause -n selftest --timeout=120s >/dev/null ||
  fail "pause pod not Running: $(kubectl get pod pause -n selftest -o yaml | tail -30)"
ip=$(kubectl get pod pause -n selftest -o jsonpath='{.status.podIP}')
[[ $ip == 10.244.0.* ]] || fail "pod IP $ip is not in the pod CIDR"
kubectl logs pause -n selftest >/dev/null || fail "kubectl logs (API server -> kubelet) failed"
pass "pause pod Running at $ip, its logs readable through the kubelet"

# A hostPort: CNI's portmap makes its chains (which down must remove).
kubectl apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: hostport, namespace: selftest}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: pause
    image: $TESTENV_PAUSE_IMAGE
    imagePullPolicy: Never
    ports: [{containerPort: 8080, hostPort: 18080}]
YAML
kubectl wait --for=jsonpath='{.status.phase}'=Running pod/hostport -n selftest --timeout=120s >/dev/null ||
  fail "hostport pod not Running"
iptables-save -t nat | grep >/dev/null 'CNI-HOSTPORT-DNAT' || fail "no portmap chain for the hostPort"
pass "hostPort pod Running, portmap rules in place"

# A Deployment: controller-manager -> ReplicaSet -> Pod, scheduled, with a mounted token.
kubectl create deployment pauses -n selftest --image="$TESTENV_PAUSE_IMAGE" --replicas=2 >/dev/null
kubectl patch deployment pauses -n selftest --type=json \
  -p '[{"op":"add","path":"/spec/template/spec/containers/0/imagePullPolicy","value":"Never"}]' >/dev/null
kubectl rollout status deployment/pauses -n selftest --timeout=120s >/dev/null || fail "deployment did not roll out"
pass "deployment rolled out (2 replicas)"

# The pod's network namespace, found through its sandbox: the kubernetes Service by IP.
sandbox_pid=""
for c in $(ctr containers ls -q); do
  if ctr containers info "$c" 2>/dev/null | grep >/dev/null '"io.kubernetes.pod.name": "pause"'; then
    if ctr containers info "$c" | grep >/dev/null '"io.cri-containerd.kind": "sandbox"'; then
      sandbox_pid=$(ctr tasks ls | awk -v c="$c" '$1 == c { print $2 }')
    fi
  fi
done
[[ -n $sandbox_pid ]] || fail "no sandbox task for pod pause (ctr tasks: $(ctr tasks ls))"
readyz=$(nsenter --target "$sandbox_pid" --net curl -fsS --max-time 5 --cacert "$dir/pki/ca.crt" https://10.0.0.1:443/readyz) ||
  fail "curl https://10.0.0.1/readyz in the pod's network namespace failed"
[[ $readyz == ok ]] || fail "/readyz through the Service said $readyz"
if nsenter --target "$sandbox_pid" --net ip route | grep >/dev/null '^default'; then
  fail "the pod has a default route: $(nsenter --target "$sandbox_pid" --net ip route)"
fi
nsenter --target "$sandbox_pid" --net curl -fsS --max-time 5 "$AWS_ENDPOINT_URL_ECR/_emulator/health" >/dev/null ||
  fail "the ECR emulator at $AWS_ENDPOINT_URL_ECR is not reachable from the pod"
pass "pod reaches https://10.0.0.1/readyz through kube-proxy and the ECR emulator, and has no default route"

tests/testenv.sh import-image "$(ls ~/.cache/ecr-pull-secrets/pause-*/pause.tar | head -n1)"
ctr images ls -q | grep >/dev/null -xF "$TESTENV_PAUSE_IMAGE" || fail "import-image: $TESTENV_PAUSE_IMAGE not listed"
pass "import-image"

# Nothing looked a name up in DNS (the only DNS server here is off the machine).
if lookups=$(grep -H 'dial tcp: lookup' "$dir"/*.log); then fail "a component looked a name up in DNS: $(head -3 <<<"$lookups")"; fi
pass "no component looked a name up in DNS"

pids=$(awk '{print $2}' "$dir/pids")
tests/testenv.sh down "$dir" || fail "down $dir failed"
trap - EXIT
check_clean "$pids"
pass "down left no process, mount, link, netns, iptables chain, cgroup, socket or kubelet file"

# An interrupted run: processes killed, nothing cleaned. The next up --node must work.
exports=$(tests/testenv.sh up --node)
eval "$exports"
dir=$TESTENV_DIR
trap 'tests/testenv.sh down "$dir" >/dev/null 2>&1 || true' EXIT
kubectl run pause -n default --image="$TESTENV_PAUSE_IMAGE" --image-pull-policy=Never --restart=Never >/dev/null
kubectl wait --for=jsonpath='{.status.phase}'=Running pod/pause -n default --timeout=120s >/dev/null ||
  fail "pause pod not Running in the second environment"
pids=$(awk '{print $2}' "$dir/pids")
for pid in $pids; do kill -KILL "$pid" 2>/dev/null || true; done
first=$dir
exports=$(tests/testenv.sh up --node) || fail "up --node after a killed run failed"
eval "$exports"
dir=$TESTENV_DIR
[[ $(kubectl get node "$TESTENV_NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}') == True ]] ||
  fail "node not Ready after a killed run"
pass "up --node after a killed run"
pids=$(awk '{print $2}' "$dir/pids")
tests/testenv.sh down "$dir" || fail "down $dir failed"
[[ ! -d $first ]] || fail "up --node did not remove the killed run's $first"
trap - EXIT
check_clean "$pids"
dir=$first
check_clean ""
pass "down after that left nothing behind"
# An up killed (SIGKILL, no trap runs) once its kubelet started: the next up --node removes it.
tests/testenv.sh up --node >/dev/null 2>"${TMPDIR:-/tmp}/node-selftest-up.err" &
up_pid=$!
killed=""
for _ in $(seq 1 600); do
  killed=$(sed -n 's/^testenv: dir //p' "${TMPDIR:-/tmp}/node-selftest-up.err")
  if [[ -n $killed && -f $killed/pids ]] && grep -q '^kubelet ' "$killed/pids"; then break; fi
  kill -0 "$up_pid" 2>/dev/null || fail "up --node ended before its kubelet started"
  sleep 0.1
done
kill -KILL "$up_pid"
wait "$up_pid" 2>/dev/null || true
rm -f "${TMPDIR:-/tmp}/node-selftest-up.err"
exports=$(tests/testenv.sh up --node) || fail "up --node after a killed up failed"
eval "$exports"
dir=$TESTENV_DIR
trap 'tests/testenv.sh down "$dir" >/dev/null 2>&1 || true' EXIT
[[ ! -d $killed ]] || fail "up --node did not remove the killed up's $killed"
pids=$(awk '{print $2}' "$dir/pids")
tests/testenv.sh down "$dir" || fail "down $dir failed"
trap - EXIT
check_clean "$pids"
dir=$killed
check_clean ""
pass "up --node after a killed up, and down after it leaving nothing"
echo "testenv-node-selftest: $passed passed, 0 failed"
