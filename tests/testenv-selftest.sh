#!/usr/bin/env bash
# The test environment itself: `up` gives an API server that answers /readyz with "ok" through
# the exported KUBECONFIG and kubectl, a user kubeconfig that RBAC refuses, and `down` leaves
# none of its processes behind.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "testenv-selftest: FAIL: $*" >&2; exit 1; }

exports=$(tests/testenv.sh up)
eval "$exports"
dir=$TESTENV_DIR
pids=$(awk '{print $2}' "$dir/pids")
[[ -n $pids ]] || fail "no pids recorded"

readyz=$(kubectl get --raw /readyz) || { tests/testenv.sh down "$dir"; fail "kubectl get --raw /readyz failed"; }
[[ $readyz == ok ]] || { tests/testenv.sh down "$dir"; fail "/readyz said $readyz"; }

user_config=$(tests/testenv.sh user selftest-user)
if kubectl --kubeconfig "$user_config" get namespaces >/dev/null 2>&1; then
  tests/testenv.sh down "$dir"
  fail "an unbound user could list namespaces"
fi

tests/testenv.sh down "$dir"
[[ ! -d $dir ]] || fail "$dir still exists after down"
for pid in $pids; do
  if [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep >/dev/null -F "$dir"; then
    fail "process $pid of the testenv still runs after down"
  fi
done
echo "testenv-selftest: 3 passed, 0 failed"
