"""N participants of PyTorch's own c10d dynamic rendezvous (torch.distributed.elastic,
the backend torchrun uses), as separate processes on loopback.

    python3 c10d_rendezvous.py N HOST:PORT RUN_ID

torch is imported once, here; then N processes are forked, so that the
import (about 0.7 s of CPU each) is not part of what is measured. Each child
prints "start <ns>" as it starts and "rank <r> <world> <ns>" once
next_rendezvous() has handed it its rank; <ns> is time.time_ns()
(CLOCK_REALTIME, comparable across processes). Child 0 hosts the TCPStore
(is_host), the others connect to it; min_nodes = max_nodes = N, so the
round completes as soon as the N-th node joins. Exits 0 when every child
has its rank.
"""
import os
import sys
import time

from torch.distributed.elastic.rendezvous import RendezvousParameters
from torch.distributed.elastic.rendezvous.registry import get_rendezvous_handler


def say(line):
    # One write per line: the children share one pipe.
    os.write(1, (line + "\n").encode())


def participant(i, n, endpoint, run_id):
    say(f"start {time.time_ns()}")
    params = RendezvousParameters(
        backend="c10d", endpoint=endpoint, run_id=run_id,
        min_nodes=n, max_nodes=n, is_host=(i == 0))
    handler = get_rendezvous_handler(params)
    _, rank, world = handler.next_rendezvous()
    say(f"rank {rank} {world} {time.time_ns()}")
    # The host keeps the store up until every participant has its rank:
    # the parent kills the children once all of them printed.
    time.sleep(3600)


def main():
    n, endpoint, run_id = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    for i in range(n):
        if os.fork() == 0:
            try:
                participant(i, n, endpoint, run_id)
            finally:
                os._exit(1)
    # The harness reads the lines and kills the whole process group.
    while True:
        try:
            os.wait()
        except ChildProcessError:
            return


if __name__ == "__main__":
    main()
