"""Several processes, GPUs or machines through ``torch.distributed`` (launched with ``torchrun``).

rbx shards work by *batch*: in every cascade stage, batch ``b`` of the points still robust runs on
rank ``b % world``; after the stage, the ranks exchange their hits (``all_gather_object``) so all of
them start the next stage with the same flags. Every batch has the same members and the same seed
as in a single-process run, so the merged record is identical to one process's (up to seconds).
Streaming evaluation (:mod:`robustbench_ext.evaluation.streaming`) shards by file instead: shard ``k`` goes to
rank ``k % world``.

Launch (one process per GPU; CPU processes use the gloo backend)::

    torchrun --nproc-per-node 4 -m robustbench_ext.cli run --model cifar10-resnet18-linf-at
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as tdist

from ..errors import RbxError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dist:
    """This process's place in the group (``world == 1``: a plain single-process run)."""

    rank: int = 0
    world: int = 1
    backend: str | None = None

    @classmethod
    def current(cls) -> "Dist":
        """The initialized default process group, or a single process."""
        if tdist.is_available() and tdist.is_initialized():
            return cls(tdist.get_rank(), tdist.get_world_size(), str(tdist.get_backend()))
        return cls()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def mine(self, index: int) -> bool:
        """Whether work item ``index`` (a batch or a shard) belongs to this rank."""
        return index % self.world == self.rank

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (picklable objects)."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        tdist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            tdist.barrier()

    def describe(self) -> dict[str, Any]:
        return {"world_size": self.world, "backend": self.backend}


def launched() -> bool:
    """True inside a multi-process ``torchrun`` launch (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str = "auto") -> tuple[Dist, str]:
    """Join the ``torchrun`` group if launched by it; return this rank and the device it should use.

    With CUDA, rank r uses ``cuda:LOCAL_RANK`` and the NCCL backend; on CPU, the gloo backend.
    """
    if not launched():
        return Dist.current(), device
    if not tdist.is_available():
        raise RbxError("this torch build has no torch.distributed; run without torchrun")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if use_cuda:
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    elif device == "auto":
        device = "cpu"
    if not tdist.is_initialized():
        tdist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    d = Dist.current()
    log.info("rank %d of %d (%s) on %s", d.rank, d.world, d.backend, device)
    return d, device
