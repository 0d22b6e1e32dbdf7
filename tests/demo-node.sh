#!/usr/bin/env bash
# `make demo-node`: the product as shipped on a real node (needs root): kube-apiserver, etcd,
# kube-controller-manager, kube-scheduler, a kubelet with containerd and kube-proxy, the ECR
# emulator and the ECR registry emulator; the image built from the Dockerfile and started by
# the kubelet from the shipped manifests (tests/node overlay); then a pod in a new namespace
# pulls a private image under its ECR host name with the secret the controller wrote into its
# default ServiceAccount. Ctrl-C stops everything; DEMO_DURATION=N stops after N seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

DEMO_DURATION=${DEMO_DURATION:-}

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

tests/install-deps.sh --node
say "building the test environment, the node and the image (cached after the first run)"
tests/testenv.sh build --node
read -r archive image_ref < <(tests/image.sh build | paste -sd' ')

say "starting the control plane, the node and the ECR emulators"
exports=$(tests/testenv.sh up --node)
eval "$exports"
cleanup() {
  trap - EXIT INT TERM
  tests/testenv.sh down "$TESTENV_DIR"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

tests/testenv.sh import-image "$archive" >/dev/null
echo "image $image_ref imported into the node's containerd"

say "kubectl apply -k tests/node (the shipped deploy/ with this image and the emulator's endpoint)"
kubectl apply --server-side -k tests/node >/dev/null
kubectl -n ecr-pull-secrets create configmap ecr-test-aws \
  --from-literal=AWS_ENDPOINT_URL_ECR="$AWS_ENDPOINT_URL_ECR" \
  --from-literal=AWS_EC2_METADATA_DISABLED=true \
  --from-literal=ECR_PULL_SECRETS_SERVICE_ACCOUNTS=default >/dev/null
kubectl -n ecr-pull-secrets create secret generic aws-credentials \
  --from-literal=aws_access_key_id="$AWS_ACCESS_KEY_ID" \
  --from-literal=aws_secret_access_key="$AWS_SECRET_ACCESS_KEY" >/dev/null
kubectl -n ecr-pull-secrets rollout status deployment/ecr-pull-secrets --timeout=180s
kubectl -n ecr-pull-secrets get pods -o wide
echo "leader: $(kubectl -n ecr-pull-secrets get lease ecr-pull-secrets -o jsonpath='{.spec.holderIdentity}')"

say "a new namespace, and a pod that names no pull secret"
kubectl create namespace demo >/dev/null
for _ in $(seq 1 120); do
  kubectl -n demo get serviceaccount default -o jsonpath='{.imagePullSecrets[*].name}' 2>/dev/null |
    grep -qw ecr-pull-secret && break
  sleep 0.5
done
echo "default ServiceAccount: imagePullSecrets=$(kubectl -n demo get sa default -o jsonpath='{.imagePullSecrets[*].name}')"
kubectl -n demo get secret ecr-pull-secret \
  -o jsonpath='{.type}{"  registries="}{.metadata.annotations.ecr-pull-secrets\.io/registries}{"  expires="}{.metadata.annotations.ecr-pull-secrets\.io/expires-at}{"\n"}'
kubectl -n demo run hello --image="$ECR_REGISTRY_IMAGE" --image-pull-policy=Always --restart=Never >/dev/null
kubectl -n demo wait --for=jsonpath='{.status.phase}'=Running pod/hello --timeout=90s
kubectl -n demo get pod hello -o wide
kubectl -n demo get events --field-selector involvedObject.name=hello -o custom-columns=REASON:.reason,MESSAGE:.message |
  grep -E 'Pulled|Pulling' || true

say "the pod pulled $ECR_REGISTRY_IMAGE with the controller's secret"
if [[ -n $DEMO_DURATION ]]; then
  sleep "$DEMO_DURATION"
else
  echo "Ctrl-C stops everything"
  sleep infinity & wait
fi
