#!/usr/bin/env bash
# Installs what a fresh machine lacks for the test environment and the demo: Debian packages
# (only when a command is missing). Go, Rust and Python 3 are expected on the machine.
# With --node, also what `tests/testenv.sh up --node` needs: runc, iptables, conntrack, iproute2.
set -euo pipefail
node=""
if [[ ${1:-} == --node ]]; then node=1; fi

log() { printf 'install-deps: %s\n' "$*" >&2; }

missing=()
command -v jq >/dev/null || missing+=(jq)
command -v openssl >/dev/null || missing+=(openssl)
command -v curl >/dev/null || missing+=(curl ca-certificates)
command -v flock >/dev/null || missing+=(util-linux)
command -v ps >/dev/null || missing+=(procps)
command -v promtool >/dev/null || missing+=(prometheus)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
# The image (tests/image.sh) and the registry emulator's pull test.
command -v buildah >/dev/null || missing+=(buildah)
command -v musl-gcc >/dev/null || missing+=(musl-tools)
command -v skopeo >/dev/null || missing+=(skopeo)
command -v strip >/dev/null || missing+=(binutils)
if [[ -n $node ]]; then
  command -v runc >/dev/null || missing+=(runc)
  command -v iptables >/dev/null || missing+=(iptables)
  command -v conntrack >/dev/null || missing+=(conntrack)
  command -v ip >/dev/null || missing+=(iproute2)
  command -v nsenter >/dev/null || missing+=(util-linux)
fi

if ((${#missing[@]} > 0)); then
  log "installing ${missing[*]}"
  sudo=()
  [[ $(id -u) == 0 ]] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

for tool in go cargo python3; do
  command -v "$tool" >/dev/null || { log "error: $tool is required (install it, then rerun)"; exit 1; }
done

# The static binary of the image.
if command -v rustup >/dev/null && ! rustup target list --installed | grep >/dev/null -x x86_64-unknown-linux-musl; then
  log "adding the Rust target x86_64-unknown-linux-musl"
  rustup target add x86_64-unknown-linux-musl >&2
fi
