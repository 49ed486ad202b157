"""torchrun plumbing: the rank and world size from the environment, the process group, and the
``--nproc K`` launcher (``python -m torch.distributed.run --nproc_per_node K -m pipeline train ...``)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls) -> DistEnv:
        return cls(
            rank=int(os.environ.get("RANK", 0)),
            world_size=int(os.environ.get("WORLD_SIZE", 1)),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        )


def init_process_group(env: DistEnv, device: torch.device) -> None:
    """NCCL between GPUs, gloo on CPU; torchrun's env:// rendezvous."""
    if env.enabled and not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size)


def barrier(env: DistEnv) -> None:
    if env.enabled:
        torch.distributed.barrier()


def all_gather_objects(env: DistEnv, obj) -> list:
    if not env.enabled:
        return [obj]
    out = [None] * env.world_size
    torch.distributed.all_gather_object(out, obj)
    return out


def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    """The command that reruns ``train`` under torchrun with ``nproc`` processes on this machine;
    ``argv``: the train arguments without ``--nproc``."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "pipeline",
        "train",
        *argv,
    ]


def parse_nproc(argv: list[str]) -> int | None:
    for i, a in enumerate(argv):
        value = (
            argv[i + 1]
            if a == "--nproc" and i + 1 < len(argv)
            else a[len("--nproc=") :]
            if a.startswith("--nproc=")
            else None
        )
        if value is not None:
            try:
                return int(value)
            except ValueError:
                return None  # typer reports the bad value
    return None


def strip_nproc(argv: list[str]) -> list[str]:
    """``argv`` without ``--nproc K`` / ``--nproc=K``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out
