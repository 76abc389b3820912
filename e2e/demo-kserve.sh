#!/usr/bin/env bash
# make demo-kserve (or make demo KSERVE=1): the demo's model as a multi-node
# KServe InferenceService, served through muster.
#
# On the local cluster (make cluster KSERVE=1: process nodes, muster's
# scheduler and coordinator, and KServe's own controller manager built from
# github.com/kserve/kserve), a ClusterServingRuntime for the tensor-parallel
# torch model (deploy/kserve/torch-tp-runtime.yaml) and an InferenceService
# that uses it (deploy/examples/kserve-torch.yaml: one muster annotation).
# KServe makes its head and worker Deployments; muster makes their 4 pods
# one group, gang-schedules them, gives the head rank 0, and KServe's
# <isvc>-predictor Service answers. Then a worker is deleted and the group
# heals in place. Prints each phase's time, then tears everything down.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=$ROOT/bin
KUBECTL="$BIN/kubectl --kubeconfig $ROOT/.local/kubeconfig"
NS=demo
WORK=$ROOT/.local/demo-kserve
mkdir -p "$WORK"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
now() { date +%s.%N; }
since() { printf '%.1fs' "$(echo "$(now) - $1" | bc)"; }

cleanup() {
  step "tearing down"
  make -s cluster-down || true
}

step "1. local cluster with KServe (make cluster KSERVE=1: muster's scheduler and coordinator, KServe's controller manager, 4 process nodes)"
t0=$(now)
make -s cluster KSERVE=1
trap cleanup EXIT
echo "   ready after $(since "$t0")"

step "2. muster's ClusterServingRuntime for the torch model, and the PVC the InferenceService's storageUri names"
sed "s#__MUSTER_REPO__#$ROOT#g" deploy/kserve/torch-tp-runtime.yaml > "$WORK/runtime.yaml"
$KUBECTL apply -f "$WORK/runtime.yaml" | sed 's/^/   /'
$KUBECTL create namespace $NS >/dev/null
# KServe mounts the model volume of a multi-node InferenceService (pvc://
# or oci:// only); the demo model makes its own weights.
mkdir -p "$WORK/models"
cat > "$WORK/pvc.yaml" <<YAML
apiVersion: v1
kind: PersistentVolume
metadata: {name: demo-models}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteMany]
  storageClassName: manual
  hostPath: {path: $WORK/models}
  claimRef: {namespace: $NS, name: models}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: models, namespace: $NS}
spec:
  accessModes: [ReadWriteMany]
  storageClassName: manual
  volumeName: demo-models
  resources: {requests: {storage: 1Gi}}
YAML
$KUBECTL apply -f "$WORK/pvc.yaml" | sed 's/^/   /'

step "3. apply deploy/examples/kserve-torch.yaml in namespace $NS"
sed -n '/^apiVersion/,$p' deploy/examples/kserve-torch.yaml | grep -v '^ *#' | sed 's/^/   /'
t_apply=$(now)
$KUBECTL -n $NS apply -f deploy/examples/kserve-torch.yaml | sed 's/^/   /'

pods() {
  $KUBECTL -n $NS get pods -l serving.kserve.io/inferenceservice=tp -o jsonpath='{range .items[*]}{.metadata.name}{" "}{.spec.nodeName}{" "}{.metadata.deletionTimestamp}{" "}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' 2>/dev/null | awk 'NF>0 && $3 !~ /Z$/' || true
}
# waitgroup WHAT: until 4 live pods are Ready, printing progress.
waitgroup() {
  local last="" start
  start=$(now)
  while :; do
    line=$(pods)
    total=$(echo "$line" | grep -c . || true)
    bound=$(echo "$line" | awk '$2 ~ /^node-/' | wc -l)
    ready=$(echo "$line" | awk '$NF=="True"' | wc -l)
    msg="   pods $total/4, bound $bound/4, Ready $ready/4"
    [ "$msg" != "$last" ] && { echo "$msg  (+$(since "$1"))"; last=$msg; }
    [ "$ready" = 4 ] && [ "$total" = 4 ] && break
    if [ "$(echo "$(now) - $start > 300" | bc)" = 1 ]; then
      echo "   $2: not within 5 minutes; pods:"; $KUBECTL -n $NS get pods -o wide; exit 1
    fi
    sleep 0.3
  done
}

step "4. KServe makes the head and worker Deployments; muster makes their pods one group"
waitgroup "$t_apply" "the group"
$KUBECTL -n $NS get deploy,pods -o wide | sed 's/^/   /'
for p in $($KUBECTL -n $NS get pods -l serving.kserve.io/inferenceservice=tp -o jsonpath='{.items[*].metadata.name}'); do
  c=$($KUBECTL -n $NS get pod "$p" -o jsonpath='{.spec.containers[0].name}')
  rank=$($KUBECTL -n $NS logs "$p" -c "$c" | grep -o 'barrier released; launching runtime.*rank=[0-9]* world_size=[0-9]*' | tail -1 | sed -E 's/.* generation=([0-9]+) rank=([0-9]+) world_size=([0-9]+)/rank \2 of \3 (generation \1)/')
  echo "   $p: group $($KUBECTL -n $NS get pod "$p" -o jsonpath='{.spec.containers[0].env[?(@.name=="MUSTER_GROUP")].value}'), $rank"
done

# The address of KServe's Service tp-predictor, from its EndpointSlice
# (the local cluster has no kube-proxy): the head's muster endpoint.
addr() {
  $KUBECTL -n $NS get endpointslices -l kubernetes.io/service-name=tp-predictor -o jsonpath='{range .items[*]}{range .endpoints[?(@.conditions.ready==true)]}{.addresses[0]}{"\n"}{end}{end}' | head -1
}
port() {
  $KUBECTL -n $NS get endpointslices -l kubernetes.io/service-name=tp-predictor -o jsonpath='{.items[0].ports[0].port}' 2>/dev/null
}
ask() {
  local a
  a=$(addr)
  [ -n "$a" ] && curl -sS -m 10 -X POST "http://$a:$(port)/v1/predict" -H 'Content-Type: application/json' -d '{"input": [10, 20, 30]}' -D "$WORK/headers" -o "$WORK/predict.json" 2>/dev/null && grep -q world_size "$WORK/predict.json"
}

step "5. one request to KServe's Service tp-predictor"
until ask; do
  if [ "$(echo "$(now) - $t_apply > 300" | bc)" = 1 ]; then echo "   no answer in 5 minutes"; exit 1; fi
  sleep 0.2
done
echo "   Service tp-predictor -> $(addr):$(port) (the head's muster endpoint)"
echo "   /v1/predict: $(head -c 160 "$WORK/predict.json")..."
echo "   served by muster generation $(grep -i x-muster-generation "$WORK/headers" | head -1 | tr -d '\r' | awk '{print $2}') of a world of $(grep -o '"world_size": *[0-9]*' "$WORK/predict.json" | grep -o '[0-9]*$'), $(since "$t_apply") after kubectl apply"
ready=$($KUBECTL -n $NS get isvc tp -o jsonpath='{.status.conditions[?(@.type=="Ready")].status} ({.status.conditions[?(@.type=="Ready")].reason})')
echo "   InferenceService Ready: $ready"
echo "   (KServe v0.17.0 says Unknown for a whole multi-node InferenceService, kserve#5703; False while a rank is down)"

step "6. a worker pod is deleted: its Deployment makes a new one, muster restarts the group in place"
victim=$($KUBECTL -n $NS get pods -l app=isvc.tp-predictor-worker -o jsonpath='{.items[0].metadata.name}')
t_kill=$(now)
$KUBECTL -n $NS delete pod "$victim" --wait=false | sed 's/^/   /'
sleep 1
until ask && grep -qi 'x-muster-generation: [1-9]' "$WORK/headers"; do
  if [ "$(echo "$(now) - $t_kill > 300" | bc)" = 1 ]; then echo "   not healed in 5 minutes"; $KUBECTL -n $NS get pods -o wide; exit 1; fi
  sleep 0.2
done
echo "   answering again after $(since "$t_kill"), muster generation $(grep -i x-muster-generation "$WORK/headers" | head -1 | tr -d '\r' | awk '{print $2}'), world of $(grep -o '"world_size": *[0-9]*' "$WORK/predict.json" | grep -o '[0-9]*$')"
waitgroup "$t_kill" "the heal"

printf '\n\033[1;32mdemo-kserve ok\033[0m: a KServe InferenceService of 4 pods, one muster group. Logs: .local/logs/\n'
