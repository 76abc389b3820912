"""The trivial program both launchers start: print the rank it was given and exit 0."""
import os

print(f"rank {os.environ['RANK']}/{os.environ['WORLD_SIZE']}", flush=True)
