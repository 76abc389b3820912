"""torchrun for Debian's torch 1.13 on Python 3.11.

torch 1.13's Std.from_str returns None under Python 3.11 (an enum change),
which breaks torchrun's argument parsing; this wrapper restores it and then
runs torchrun unchanged: `python3 torchrun.py [torchrun args...]`."""
from torch.distributed.elastic.multiprocessing.api import Std

Std.from_str = classmethod(lambda cls, v: Std(int(v)))

from torch.distributed.run import main  # noqa: E402

if __name__ == "__main__":
    main()
