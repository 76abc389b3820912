"""torchrun for Debian's torch 1.13 on Python 3.11, with timestamped logs.

torch 1.13's Std.from_str returns None under Python 3.11 (an enum change),
which breaks torchrun's argument parsing; this wrapper restores it (the fix
e2e/testdata/torchrun.py makes) and prefixes every log line with its Unix
time in seconds (CLOCK_REALTIME), so that the benchmarks can tell when the
elastic agent did what. Run with LOGLEVEL=INFO for the agent's own lines:
`python3 torchrun.py [torchrun args...]`."""
import logging

logging.basicConfig(format="%(created).6f %(levelname)s %(name)s: %(message)s", level=logging.INFO)

from torch.distributed.elastic.multiprocessing.api import Std  # noqa: E402

Std.from_str = classmethod(lambda cls, v: Std(int(v)))

from torch.distributed.run import main  # noqa: E402

if __name__ == "__main__":
    main()
