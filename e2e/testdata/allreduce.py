"""A real torch.distributed program: every rank joins a gloo process group
from the environment alone (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, as
muster's agent sets them), all-reduces, and checks the result.

Knobs (environment), for tests and the demo:
  STEPS=N               run N all_reduce steps (default 1), 0.2 s apart
  FAIL_RANK_IN_GEN0=R   rank R exits 3 in generation 0 before init, so its
                        peers hang inside init_process_group
  FAIL_AT_STEP=S        with FAIL_RANK_IN_GEN0, fail at step S instead, so
                        its peers hang inside all_reduce
"""
import os
import sys
import time

# Gloo picks its network interface from the host name by default; on one
# machine every member shares loopback.
os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")

import torch
import torch.distributed as dist

rank_env = os.environ.get("RANK")
gen = os.environ.get("MUSTER_GENERATION", "?")
fail_here = os.environ.get("FAIL_RANK_IN_GEN0") == rank_env and gen == "0"
fail_step = int(os.environ.get("FAIL_AT_STEP", "-1"))
if fail_here and fail_step < 0:
    print(f"rank {rank_env}: failing on purpose in generation 0", file=sys.stderr)
    sys.exit(3)

dist.init_process_group("gloo", init_method="env://")
rank, world = dist.get_rank(), dist.get_world_size()
steps = int(os.environ.get("STEPS", "1"))
want = world * (world + 1) / 2
for step in range(steps):
    if fail_here and step == fail_step:
        print(f"rank {rank}: crashing on purpose at step {step} (generation 0)", file=sys.stderr, flush=True)
        os._exit(3)
    t = torch.tensor([float(rank + 1)])
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    if t.item() != want:
        print(f"rank {rank}/{world}: all_reduce gave {t.item()}, want {want}", file=sys.stderr)
        sys.exit(1)
    if steps > 1:
        print(f"rank {rank}/{world} generation {gen}: step {step} all_reduce sum {int(t.item())}", flush=True)
        time.sleep(0.2)
print(f"rank {rank}/{world} generation {gen}: all_reduce ok, sum {int(t.item())}", flush=True)
dist.barrier()
dist.destroy_process_group()
