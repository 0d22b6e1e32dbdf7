#!/usr/bin/env bash
# The end-to-end suites against other Kubernetes versions (docs/testing.md#kubernetes-versions):
#
#   tests/compat.sh [--build-only] VERSION... -- SUITE...
#
# For each VERSION in turn: start one test environment on it (`up` builds kube-apiserver and
# kubectl of that version first if the cache lacks them; a failed build fails the run), check that
# the API server reports exactly VERSION, then run each SUITE (a tests/SUITE.rs) in it with
# `cargo test --locked --test SUITE -- --test-threads=1`. Every suite runs even after a failure;
# a line per version and suite gives pass/fail and seconds, and a table closes the run. Exit
# code 1 if any suite failed or any version could not be built or started: never a skip.
# --build-only: only build every VERSION (CI does this before the tests, with the other builds).
# COMPAT_SUMMARY=FILE also writes the table there.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}

build_only=""
if [[ ${1:-} == --build-only ]]; then build_only=1; shift; fi
versions=()
while (($# > 0)) && [[ $1 != -- ]]; do versions+=("$1"); shift; done
if [[ ${1:-} == -- ]]; then shift; fi
suites=("$@")
((${#versions[@]} > 0)) || { echo "compat: no version given (usage: $0 [--build-only] VERSION... -- SUITE...)" >&2; exit 2; }

if [[ -n $build_only ]]; then
  for v in "${versions[@]}"; do
    start=$SECONDS
    if ! KUBE_VERSION=$v tests/testenv.sh build; then
      echo "compat: FAIL: Kubernetes $v could not be built (tests/testenv.sh build above)" >&2
      exit 1
    fi
    echo "compat: $v built or cached in $((SECONDS - start)) s" >&2
  done
  exit 0
fi
((${#suites[@]} > 0)) || { echo "compat: no suite given" >&2; exit 2; }

# The test binaries once, before any environment runs (as test-e2e does).
test_args=()
for suite in "${suites[@]}"; do test_args+=(--test "$suite"); done
$CARGO build --locked --bins "${test_args[@]}"

failed=0
summary=$(mktemp)
trap 'rm -f "$summary"' EXIT
printf '%-10s %-20s %-6s %s\n' version suite result seconds >"$summary"

# Runs inside the environment of one version: the version check, then every suite.
run_suites() {
  local v=$1 suite start rc got
  shift
  got=$(kubectl get --raw /version | jq -r .gitVersion)
  if [[ $got != "$v" ]]; then
    echo "compat: FAIL: the API server says $got, expected $v" >&2
    printf '%-10s %-20s %-6s %s\n' "$v" "(environment)" fail 0 >>"$summary"
    return 1
  fi
  rc=0
  for suite in "$@"; do
    start=$SECONDS
    echo "compat: $v $suite ..." >&2
    if $CARGO test --locked --test "$suite" -- --test-threads=1; then
      echo "compat: $v $suite pass $((SECONDS - start)) s" >&2
      printf '%-10s %-20s %-6s %s\n' "$v" "$suite" pass "$((SECONDS - start))" >>"$summary"
    else
      echo "compat: $v $suite FAIL $((SECONDS - start)) s" >&2
      printf '%-10s %-20s %-6s %s\n' "$v" "$suite" fail "$((SECONDS - start))" >>"$summary"
      rc=1
    fi
  done
  return "$rc"
}

for v in "${versions[@]}"; do
  start=$SECONDS
  export -f run_suites
  export CARGO summary
  if ! KUBE_VERSION=$v tests/testenv.sh run -- bash -euo pipefail -c 'run_suites "$@"' run_suites "$v" "${suites[@]}"; then
    failed=1
    # An environment that did not start leaves no line: say so in the table.
    grep -q "^$v " "$summary" || printf '%-10s %-20s %-6s %s\n' "$v" "(environment)" fail 0 >>"$summary"
  fi
  echo "compat: $v done in $((SECONDS - start)) s" >&2
done

echo "compat: results" >&2
cat "$summary" >&2
[[ -z ${COMPAT_SUMMARY:-} ]] || cp "$summary" "$COMPAT_SUMMARY"
passed=$(awk 'NR > 1 && $3 == "pass"' "$summary" | wc -l)
fails=$(awk 'NR > 1 && $3 == "fail"' "$summary" | wc -l)
echo "compat: $passed passed, $fails failed"
exit "$failed"
