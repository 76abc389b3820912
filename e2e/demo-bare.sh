#!/usr/bin/env bash
# make demo: muster on bare hosts, on one machine.
#
# A coordinator (with its embedded etcd) and four agents on 127.0.0.2-5 run a
# real torch.distributed (gloo) program. The agents meet at the barrier, get
# RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT, and start together. Then rank 2
# crashes mid-run while its peers are stuck inside all_reduce: muster
# restarts the whole group in place, same ranks, generation 1, and the run
# completes. Logs stay in .local/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${MUSTER_BIN:-$PWD/bin}
PY=${TORCH_PYTHON:-/usr/bin/python3}
DEMO=.local/demo
N=4

if ! "$PY" -c 'import torch.distributed' 2>/dev/null; then
  echo "demo: $PY has no torch; run 'make deps' (apt-get install python3-torch) first" >&2
  exit 1
fi
rm -rf "$DEMO"
mkdir -p "$DEMO"

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
COORD=127.0.0.1:$(free_port)

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "0. certificates: a CA, the coordinator's, one per member (coordinator certs; see docs/security.md)"
CERTS=$DEMO/certs
"$BIN/coordinator" certs ca --dir "$CERTS" | sed 's/^/   /'
"$BIN/coordinator" certs server --dir "$CERTS" --hosts 127.0.0.1 | sed 's/^/   /'
for i in $(seq 0 $((N - 1))); do
  "$BIN/coordinator" certs member --dir "$CERTS" --group demo --member "host-$i" --hosts "127.0.0.$((i + 2))" | sed 's/^/   /'
done

step "1. coordinator on $COORD (TLS, member certificates; embedded etcd in $DEMO/data)"
"$BIN/coordinator" --listen "$COORD" --data-dir "$DEMO/data" \
  --etcd-listen-client "127.0.0.1:$(free_port)" --etcd-listen-peer "127.0.0.1:$(free_port)" \
  --tls-cert "$CERTS/server.crt" --tls-key "$CERTS/server.key" --client-ca "$CERTS/ca.crt" \
  >"$DEMO/coordinator.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -qs "coordinator serving" "$DEMO/coordinator.log" && break; sleep 0.1; done
grep -q "coordinator serving" "$DEMO/coordinator.log" || { cat "$DEMO/coordinator.log"; exit 1; }
sed 's/^/   /' "$DEMO/coordinator.log"

step "2. four agents on 127.0.0.2-5, started one second apart, each running:"
echo "   agent run --coordinator $COORD --ca $CERTS/ca.crt --cert $CERTS/member-default-demo-host-I.crt --key ... \\"
echo "     --group demo --size $N --member-id host-I --address 127.0.0.I+2 --ordinal I \\"
echo "     -- $PY e2e/testdata/allreduce.py    (STEPS=6; rank 2 crashes at step 2 in generation 0)"
start=$(date +%s.%N)
for i in $(seq 0 $((N - 1))); do
  STEPS=6 FAIL_RANK_IN_GEN0=2 FAIL_AT_STEP=2 \
    "$BIN/agent" run --coordinator "$COORD" --group demo --size $N \
    --member-id "host-$i" --address "127.0.0.$((i + 2))" --ordinal "$i" --stop-grace 3s \
    --ca "$CERTS/ca.crt" --cert "$CERTS/member-default-demo-host-$i.crt" --key "$CERTS/member-default-demo-host-$i.key" \
    -- "$PY" e2e/testdata/allreduce.py >"$DEMO/host-$i.log" 2>&1 &
  pids+=($!)
  sleep 1
done

step "3. waiting for the group (progress from host-0's log)"
fail=0
for i in $(seq 0 $((N - 1))); do
  wait "${pids[$((i + 1))]}" || fail=1
done
end=$(date +%s.%N)
grep -E 'joined|barrier released|crashing|group restarting|rejoined|completed' "$DEMO/host-0.log" "$DEMO/host-2.log" \
  | sed -E 's#^\.local/demo/##; s/^(host-[0-9])\.log:/   [\1] /; s/time=[^ ]+ //; s/ group=default\/demo member=host-[0-9]//' | sort -s -k1,1 | head -40

step "4. what each rank computed"
for i in $(seq 0 $((N - 1))); do
  echo "   [host-$i] $(grep 'all_reduce ok' "$DEMO/host-$i.log" | tail -1)"
done

step "5. the coordinator's account"
grep -E 'barrier released|restarting|every rank' "$DEMO/coordinator.log" | sed -E 's/time=[^ ]+ //; s/^/   /'

if [ "$fail" = 0 ] && [ "$(grep -c 'generation 1: all_reduce ok' "$DEMO"/host-*.log | awk -F: '{s+=$2} END {print s}')" = "$N" ]; then
  printf '\n\033[1;32mdemo ok\033[0m: %d ranks healed in place and completed generation 1 (%.1fs in all). Logs: %s/\n' "$N" "$(echo "$end - $start" | bc)" "$DEMO"
else
  printf '\n\033[1;31mdemo failed\033[0m: see %s/\n' "$DEMO"
  exit 1
fi
