"""A training-like worker for the failure benchmarks, the same under muster's
agent and under torchrun: it joins a gloo process group from the
environment both set (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), then
all_reduces in a loop, so that a peer that dies fails the collective here
at once (exit 1), as it would in training.

Prints, with time.time_ns() (CLOCK_REALTIME):
  worker-start <ns> rank <r> restart <TORCHELASTIC_RESTART_COUNT> pid <pid>
  worker-ready <ns> rank <r>          (the process group is up)
"""
import os
import sys
import time
from datetime import timedelta

t0 = time.time_ns()
# Gloo picks its interface from the host name by default; every member
# shares loopback here.
os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

rank = int(os.environ["RANK"])
restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "?")
print(f"worker-start {t0} rank {rank} restart {restart} pid {os.getpid()}", flush=True)
dist.init_process_group("gloo", init_method="env://", timeout=timedelta(seconds=60))
print(f"worker-ready {time.time_ns()} rank {rank}", flush=True)
t = torch.ones(1)
try:
    while True:
        dist.all_reduce(t)
        time.sleep(0.05)
except RuntimeError as e:
    print(f"worker-failed {time.time_ns()} rank {rank}: {e}", file=sys.stderr, flush=True)
    sys.exit(1)
