#!/usr/bin/env bash
# The container image as shipped, built here from the repository's Dockerfile without any image
# registry: a static musl release binary built on this host, packaged by the Dockerfile's
# `runtime-from-binary` target (FROM scratch) with buildah (vfs storage, no daemon).
#
#   tests/image.sh build   build (or reuse) the image archive; prints two lines:
#                          the archive path (OCI archive, for `ctr -n k8s.io images import`)
#                          and the image reference (localhost/ecr-pull-secrets:dev)
#   tests/image.sh check   build, then check the image: numeric non-root user, exactly the
#                          expected files (no shell), size, `--version` run as 65532 from
#                          the unpacked root file system (chroot); inside the test
#                          environment, that its AWS client trusts the image's CA bundle;
#                          when containerd is at hand, `ctr -n k8s.io images import`
#
# Cached under ${ECR_PULL_SECRETS_CACHE:-~/.cache/ecr-pull-secrets}/image/<key>, the key being a
# hash of the binary, this script, the Dockerfile, image/ and the CA bundle; buildah's storage in
# .../buildah. The cargo build uses CARGO_TARGET_DIR (default: the repository's target/).
# Settings: IMAGE_REF (localhost/ecr-pull-secrets:dev), IMAGE_MAX_MIB (15),
# IMAGE_CA_BUNDLE (/etc/ssl/certs/ca-certificates.crt).
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
REPO_ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd -P)
CACHE=${ECR_PULL_SECRETS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ecr-pull-secrets}
IMAGE_REF=${IMAGE_REF:-localhost/ecr-pull-secrets:dev}
IMAGE_MAX_MIB=${IMAGE_MAX_MIB:-15}
CA_BUNDLE=${IMAGE_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
MUSL_TARGET=x86_64-unknown-linux-musl
STORAGE="$CACHE/buildah"

log() { printf 'image: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

buildah_() { buildah --root "$STORAGE/root" --runroot "$STORAGE/run" --storage-driver vfs "$@"; }

binary() {
  local target_dir=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
  local start=$SECONDS
  rustup target list --installed 2>/dev/null | grep >/dev/null -x "$MUSL_TARGET" ||
    die "the Rust target $MUSL_TARGET is missing: rustup target add $MUSL_TARGET"
  command -v musl-gcc >/dev/null || die "musl-gcc is missing: apt-get install musl-tools"
  log "cargo build --release --locked --target $MUSL_TARGET"
  (cd "$REPO_ROOT" && cargo build --release --locked --target "$MUSL_TARGET" >&2)
  log "binary built in $((SECONDS - start))s"
  BINARY="$target_dir/$MUSL_TARGET/release/ecr-pull-secrets"
  [[ -x $BINARY ]] || die "no binary at $BINARY"
}

# build: sets ARCHIVE
build() {
  command -v buildah >/dev/null || die "buildah is missing: apt-get install buildah"
  command -v strip >/dev/null || die "strip is missing: apt-get install binutils"
  [[ -f $CA_BUNDLE ]] || die "no CA bundle at $CA_BUNDLE (apt-get install ca-certificates)"
  binary
  local key dir ctx start=$SECONDS
  key=$(cat "$BINARY" "${BASH_SOURCE[0]}" "$REPO_ROOT/Dockerfile" "$REPO_ROOT/image/passwd" "$REPO_ROOT/image/group" "$CA_BUNDLE" |
    sha256sum | cut -c1-16)
  dir="$CACHE/image/$key"
  ARCHIVE="$dir/ecr-pull-secrets.oci.tar"
  if [[ -f $ARCHIVE ]]; then
    log "image $key: cached"
    return 0
  fi
  mkdir -p "$CACHE/image" "$STORAGE"
  exec 8>"$CACHE/image/.lock"
  flock 8
  rm -rf "$dir"
  ctx="$dir/context"
  mkdir -p "$ctx/image"
  cp "$REPO_ROOT/Dockerfile" "$ctx/Dockerfile"
  cp "$REPO_ROOT/image/passwd" "$REPO_ROOT/image/group" "$ctx/image/"
  cp "$BINARY" "$ctx/ecr-pull-secrets"
  # As the Dockerfile's build stage does: the symbol table is a fifth of the file and is never
  # loaded (panic messages stay, backtraces lose function names).
  strip --strip-all "$ctx/ecr-pull-secrets"
  cp "$CA_BUNDLE" "$ctx/ca-certificates.crt"
  log "buildah bud --target runtime-from-binary -t $IMAGE_REF"
  buildah_ bud --quiet --layers=false --target runtime-from-binary -t "$IMAGE_REF" \
    -f "$ctx/Dockerfile" "$ctx" >&2
  buildah_ push --quiet "$IMAGE_REF" "oci-archive:$ARCHIVE.tmp:$IMAGE_REF" >&2
  buildah_ rmi "$IMAGE_REF" >/dev/null 2>&1 || true
  mv "$ARCHIVE.tmp" "$ARCHIVE"
  rm -rf "$ctx"
  # Only the newest image is kept.
  find "$CACHE/image" -mindepth 1 -maxdepth 1 -type d ! -name "$key" -exec rm -rf {} +
  flock -u 8
  log "image built in $((SECONDS - start))s: $ARCHIVE"
}

mib() { awk -v b="$1" 'BEGIN { printf "%.2f MiB", b / 1048576 }'; }

check() {
  build
  local work fail=0
  work=$(mktemp -d /tmp/ecr-image-check.XXXXXX)
  # shellcheck disable=SC2064
  trap "rm -rf '$work'" EXIT
  tar -xf "$ARCHIVE" -C "$work"
  local blobs=$work/blobs/sha256 manifest config user
  manifest=$(jq -r '.manifests[0].digest' "$work/index.json" | cut -d: -f2)
  config=$(jq -r '.config.digest' "$blobs/$manifest" | cut -d: -f2)
  mkdir "$work/rootfs"
  local layer
  for layer in $(jq -r '.layers[].digest' "$blobs/$manifest" | cut -d: -f2); do
    tar -xf "$blobs/$layer" -C "$work/rootfs"
  done

  user=$(jq -r '.config.User // ""' "$blobs/$config")
  if [[ $user =~ ^([0-9]+)(:([0-9]+))?$ ]] && ((BASH_REMATCH[1] != 0)) && [[ ${BASH_REMATCH[3]:-1} != 0 ]]; then
    log "ok: user $user (numeric, not root)"
  else
    log "FAIL: user is '$user', want a numeric non-root uid:gid"; fail=1
  fi
  local entry
  entry=$(jq -c '[.config.Entrypoint, .config.Cmd]' "$blobs/$config")
  log "entrypoint and cmd: $entry"

  local files expected
  files=$(cd "$work/rootfs" && find . -mindepth 1 \( -type f -o -type l \) | sort | tr '\n' ' ')
  expected="./etc/group ./etc/passwd ./etc/ssl/certs/ca-certificates.crt ./usr/local/bin/ecr-pull-secrets "
  if [[ $files == "$expected" ]]; then
    log "ok: files are exactly: $files"
  else
    log "FAIL: files are: $files; want: $expected"; fail=1
  fi
  if [[ -e $work/rootfs/bin/sh || -L $work/rootfs/bin/sh ]]; then
    log "FAIL: /bin/sh exists"; fail=1
  else
    log "ok: no /bin/sh"
  fi

  local compressed=0 uncompressed s
  for s in $(jq -r '.layers[].size, .config.size' "$blobs/$manifest"); do
    compressed=$((compressed + s))
  done
  uncompressed=$(du -sb "$work/rootfs" | cut -f1)
  local binsize
  binsize=$(stat -c %s "$work/rootfs/usr/local/bin/ecr-pull-secrets")
  log "size: $(mib "$compressed") compressed (layers + config), $(mib "$uncompressed") unpacked, binary $(mib "$binsize")"
  if ((uncompressed > IMAGE_MAX_MIB * 1048576)); then
    log "FAIL: unpacked size above ${IMAGE_MAX_MIB} MiB"; fail=1
  fi

  # As the image runs it: its own root file system, its user, an empty environment.
  local version chroot_bin
  chroot_bin=$(PATH=$PATH:/usr/sbin:/sbin command -v chroot) || die "chroot (coreutils) is missing"
  if version=$(env -i "$chroot_bin" --userspec=65532:65532 "$work/rootfs" /usr/local/bin/ecr-pull-secrets --version 2>&1); then
    log "ok: --version as 65532 in the image's root file system: $version"
  else
    log "FAIL: --version: $version"; fail=1
  fi
  ca_check "$work" "$chroot_bin" || fail=1
  import_check "$work" || fail=1
  ((fail == 0)) || die "image check failed ($ARCHIVE)"
  log "image ok: $ARCHIVE ($IMAGE_REF)"
}

# ca_check WORK CHROOT: inside the test environment (tests/testenv.sh run), the image's AWS client
# trusts exactly its /etc/ssl/certs/ca-certificates.crt: `check` against the registry emulator's
# TLS listener (a certificate from the test CA) fails the handshake with UnknownIssuer, and
# passes it once that file is the test CA (the emulator then answers 401: not an ECR API).
ca_check() {
  local work=$1 chroot_bin=$2 rootfs=$1/rootfs-ca out1 out2
  if [[ -z ${ECR_REGISTRY_ADDRESS:-} || -z ${ECR_REGISTRY_CA:-} || -z ${KUBECONFIG:-} ]]; then
    log "SKIPPED CA bundle check: run inside tests/testenv.sh run"
    return 0
  fi
  cp -a "$work/rootfs" "$rootfs"
  install -m 0644 "$KUBECONFIG" "$rootfs/kubeconfig"
  aws_check() {
    env -i KUBECONFIG=/kubeconfig AWS_ENDPOINT_URL_ECR="https://$ECR_REGISTRY_ADDRESS" AWS_REGION="${AWS_REGION:-us-east-1}" \
      AWS_ACCESS_KEY_ID=AKIATESTENV000000001 AWS_SECRET_ACCESS_KEY=testenv AWS_EC2_METADATA_DISABLED=true \
      timeout 120 "$chroot_bin" --userspec=65532:65532 "$rootfs" /usr/local/bin/ecr-pull-secrets check 2>&1 |
      grep '^FAIL  aws' || true
  }
  out1=$(aws_check)
  cp "$ECR_REGISTRY_CA" "$rootfs/etc/ssl/certs/ca-certificates.crt"
  out2=$(aws_check)
  if [[ $out1 == *UnknownIssuer* && -n $out2 && $out2 != *UnknownIssuer* && $out2 != *TLS* ]]; then
    log "ok: the AWS client trusts the image's CA bundle, and only it"
    return 0
  fi
  log "FAIL: CA bundle: with the shipped bundle: '$out1'; with the test CA as bundle: '$out2'"
  return 1
}

# import_check WORK: when containerd and ctr are at hand (CONTAINERD_BIN and CTR_BIN, else the
# cache's containerd-v*/bin, as the node test environment builds them), a throw-away containerd
# imports the archive into namespace k8s.io, as the node does, under the expected name.
import_check() {
  local work=$1 cached containerd_bin ctr_bin
  cached=$(find "$CACHE" -maxdepth 3 -path '*/containerd-v*/bin/containerd' 2>/dev/null | sort -V | tail -n1)
  containerd_bin=${CONTAINERD_BIN:-$cached}
  ctr_bin=${CTR_BIN:-${cached:+${cached%/containerd}/ctr}}
  if [[ -z $containerd_bin || -z $ctr_bin ]]; then
    log "SKIPPED ctr import: no containerd/ctr (set CONTAINERD_BIN and CTR_BIN)"
    return 0
  fi
  local root=$work/containerd sock pid rc=0 out
  mkdir -p "$root"
  sock=$root/containerd.sock
  printf 'version = 3\nroot = "%s/root"\nstate = "%s/state"\n[grpc]\n  address = "%s"\n' \
    "$root" "$root" "$sock" >"$root/config.toml"
  "$containerd_bin" --config "$root/config.toml" >"$root/containerd.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do [[ -S $sock ]] && break; sleep 0.1; done
  if out=$("$ctr_bin" --address "$sock" -n k8s.io images import "$ARCHIVE" 2>&1) &&
    out=$("$ctr_bin" --address "$sock" -n k8s.io images ls -q 2>&1) && grep -qx "$IMAGE_REF" <<<"$out"; then
    log "ok: ctr -n k8s.io images import: $IMAGE_REF"
  else
    log "FAIL: ctr import: $out"
    tail -n 20 "$root/containerd.log" >&2
    rc=1
  fi
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  return "$rc"
}

case ${1:-} in
  build)
    build
    printf '%s\n%s\n' "$ARCHIVE" "$IMAGE_REF"
    ;;
  check) check ;;
  *)
    awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0" >&2
    exit 2
    ;;
esac
