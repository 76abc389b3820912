"""A real torch.distributed program: every rank joins a gloo process group
from the environment alone (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, as
muster's agent sets them), all-reduces its rank, and checks the sum."""
import os
import sys

# Gloo picks its network interface from the host name by default; on one
# machine every member shares loopback.
os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")

import torch
import torch.distributed as dist

# For the restart test: this rank fails in generation 0 before joining, so
# its peers hang inside init_process_group until muster restarts them all.
if os.environ.get("FAIL_RANK_IN_GEN0") == os.environ.get("RANK") and os.environ.get("MUSTER_GENERATION") == "0":
    print(f"rank {os.environ['RANK']}: failing on purpose in generation 0", file=sys.stderr)
    sys.exit(3)

dist.init_process_group("gloo", init_method="env://")
rank, world = dist.get_rank(), dist.get_world_size()
t = torch.tensor([float(rank + 1)])
dist.all_reduce(t, op=dist.ReduceOp.SUM)
want = world * (world + 1) / 2
gen = os.environ.get("MUSTER_GENERATION", "?")
if t.item() != want:
    print(f"rank {rank}/{world}: all_reduce gave {t.item()}, want {want}", file=sys.stderr)
    sys.exit(1)
print(f"rank {rank}/{world} generation {gen}: all_reduce ok, sum {int(t.item())}", flush=True)
dist.barrier()
dist.destroy_process_group()
