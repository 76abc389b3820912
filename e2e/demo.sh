#!/usr/bin/env bash
# make demo: a model too big for one machine, served like one pod.
#
# On a local Kubernetes 1.37 control plane (make cluster: process nodes that
# run pod commands as local processes), a StatefulSet of 4 pods with two
# muster annotations (deploy/examples/tp-model.yaml) runs a tensor-parallel
# model over torch.distributed (gloo). muster's webhook injects its agent,
# its scheduler binds the 4 pods together, the coordinator hands out ranks
# (= pod ordinals) and releases them at once, and every pod's agent serves
# the group's one endpoint. The demo asks it a question, prints the answer,
# each pod's rank and the time each phase took, then tears everything down.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=$ROOT/bin
KUBECTL="$BIN/kubectl --kubeconfig $ROOT/.local/kubeconfig"
# kubectl finds plugins on PATH: bin/kubectl-muster is `kubectl muster`.
MUSTER="env PATH=$BIN:$PATH KUBECONFIG=$ROOT/.local/kubeconfig $BIN/kubectl muster"
NS=demo
WORK=$ROOT/.local/demo-k8s
mkdir -p "$WORK"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
now() { date +%s.%N; }
since() { printf '%.1fs' "$(echo "$(now) - $1" | bc)"; }

cleanup() {
  step "tearing down"
  make -s cluster-down || true
}

step "1. local cluster (make cluster: etcd, kube-apiserver, kube-controller-manager, muster's scheduler and coordinator, 4 process nodes)"
t0=$(now)
make -s cluster
trap cleanup EXIT
echo "   ready after $(since "$t0")"

step "2. apply deploy/examples/tp-model.yaml (a StatefulSet of 4 pods + a Service) in namespace $NS"
$KUBECTL create namespace $NS >/dev/null
sed "s#__MUSTER_REPO__#$ROOT#g" deploy/examples/tp-model.yaml > "$WORK/tp-model.yaml"
grep -E '^ +muster.dev/(inject|size|port)' "$WORK/tp-model.yaml" | sed 's/^ */   /'
t_apply=$(now)
$KUBECTL -n $NS apply -f "$WORK/tp-model.yaml" | sed 's/^/   /'

step "3. the group forms"
last=""
while :; do
  line=$($KUBECTL -n $NS get pods -l app=tp-model -o jsonpath='{range .items[*]}{.metadata.name}{" "}{.spec.nodeName}{" "}{.status.conditions[?(@.type=="muster.dev/group-ready")].status}{" "}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' 2>/dev/null || true)
  total=$(echo "$line" | grep -c . || true)
  bound=$(echo "$line" | awk 'NF>=2 && $2 ~ /^node-/' | wc -l)
  ready=$(echo "$line" | awk '$NF=="True"' | wc -l)
  msg="   pods created $total/4, bound $bound/4, Ready $ready/4"
  [ "$msg" != "$last" ] && { echo "$msg  (+$(since "$t_apply"))"; last=$msg; }
  [ "$ready" = 4 ] && break
  if [ "$(echo "$(now) - $t_apply > 300" | bc)" = 1 ]; then
    echo "   the group did not become Ready in 5 minutes; pods:"; $KUBECTL -n $NS get pods -o wide; exit 1
  fi
  sleep 0.3
done

step "4. what muster did to each pod"
$KUBECTL -n $NS get pods -l app=tp-model -o wide | sed 's/^/   /'
for i in 0 1 2 3; do
  rank=$($KUBECTL -n $NS logs tp-model-$i -c model | grep -o 'barrier released; launching runtime.*rank=[0-9]* world_size=[0-9]*' | tail -1 | sed -E 's/.* generation=([0-9]+) rank=([0-9]+) world_size=([0-9]+)/rank \2 of \3 (generation \1)/')
  echo "   tp-model-$i: $rank"
done

step "5. one request to the group's endpoint"
# The address comes from the Service's EndpointSlices, as kube-proxy
# would take it (the local cluster has no kube-proxy): a ready endpoint,
# here the third one, so a worker's agent forwards to the leader.
for _ in $(seq 100); do
  addrs=$($KUBECTL -n $NS get endpointslices -l kubernetes.io/service-name=tp-model -o jsonpath='{range .items[*].endpoints[?(@.conditions.ready==true)]}{.addresses[0]} {.targetRef.name}{"\n"}{end}')
  [ "$(echo "$addrs" | grep -c .)" = 4 ] && break
  sleep 0.2
done
port=$($KUBECTL -n $NS get endpointslices -l kubernetes.io/service-name=tp-model -o jsonpath='{.items[0].ports[0].port}')
echo "   EndpointSlice of Service tp-model:"; echo "$addrs" | sort -k2 | sed "s/ /:$port  /; s/^/     /"
pick=$(echo "$addrs" | grep -w tp-model-2 || echo "$addrs" | head -1)
addr=$(echo "$pick" | awk '{print $1}'):$port
echo "   POST http://$addr/v1/completions  ($(echo "$pick" | awk '{print $2}'): its agent forwards to the leader's)"
t_req=$(now)
curl -sS -N -X POST "http://$addr/v1/completions" -H 'Content-Type: application/json' \
  -d '{"prompt": "muster makes a model too big for one machine", "max_tokens": 20, "stream": true}' > "$WORK/answer.sse"
t_answer=$(since "$t_req")
printf '   streamed answer: "%s"\n' "$(grep -o '"token": *"[^"]*"' "$WORK/answer.sse" | sed -E 's/"token": *"(.*)"/\1/' | tr -d '\n')"
curl -sS -X POST "http://$addr/v1/predict" -H 'Content-Type: application/json' -d '{"input": [10, 20, 30]}' -D "$WORK/headers" > "$WORK/predict.json"
echo "   /v1/predict: $(cat "$WORK/predict.json" | head -c 160)..."
echo "   served by generation $(grep -i x-muster-generation "$WORK/headers" | head -1 | tr -d '\r' | awk '{print $2}') of a world of $(grep -o '"world_size": *[0-9]*' "$WORK/predict.json" | grep -o '[0-9]*$')"

step "6. the group as muster sees it: kubectl muster (bin/kubectl-muster, a kubectl plugin on PATH)"
echo "   first answer streamed in $t_answer, $(since "$t_apply") after kubectl apply"
echo
echo "   \$ kubectl muster get groups -A"
$MUSTER get groups -A | sed 's/^/   /'
echo
echo "   \$ kubectl muster describe group tp-model -n $NS"
$MUSTER describe group tp-model -n $NS | sed 's/^/   /'

printf '\n\033[1;32mdemo ok\033[0m: 4 pods, one endpoint. Logs: .local/logs/ (or kubectl muster logs group tp-model -n %s), answer: %s\n' "$NS" "$WORK/answer.sse"
