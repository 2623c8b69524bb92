"""Data-parallel training across processes and machines with PyTorch's own engine (torchrun + DDP).

``torchrun --nproc_per_node=N -m moma train ...`` starts N copies of the same
command; torchrun puts ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in each
one's environment. Every rank builds the same global length-bucketed batches
from the same seed and takes its own share of each (see
:class:`moma.data.batching.DistributedBucketBatchSampler`); gradients are averaged by
:class:`torch.nn.parallel.DistributedDataParallel`; rank 0 alone validates,
logs and writes checkpoints, and broadcasts what the others need to agree on
(the monitored value, early stopping). Without torchrun (``WORLD_SIZE`` unset
or 1) every function here is a no-op, so single-process code pays nothing.

The backend is NCCL when training on CUDA and gloo on CPU (gloo also serves
the CPU test that checks a 2-process run against a single-process one).
"""

from __future__ import annotations

import datetime
import gc
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in a data-parallel job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # rank on this machine: picks the GPU

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs, validates and writes files."""
        return self.rank == 0


def env_dist_info() -> DistInfo:
    """The job layout torchrun put in the environment (single process when absent)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    return DistInfo(rank=int(os.environ.get("RANK", "0")), world_size=world,
                    local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def init_distributed(device_type: str = "cpu", timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group torchrun set up (idempotent); returns this process's place in it.

    ``device_type`` picks the backend: NCCL for ``cuda``, gloo otherwise.
    """
    info = env_dist_info()
    if not info.enabled:
        return info
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
        log.info("joined %s process group: rank %d of %d (local rank %d)", backend, info.rank,
                 info.world_size, info.local_rank)
    return info


def shutdown_distributed() -> None:
    """Leave the process group (call once, at the end of the command that joined it)."""
    if dist.is_available() and dist.is_initialized():
        # DDP reducers and finished work objects left in reference cycles hold the group; freed only at
        # interpreter exit, gloo's threads are torn down after it and the process can abort (SIGABRT,
        # "terminate called without an active exception", seen once on a CI run)
        gc.collect()
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (any picklable value; used for small control data only)."""
    if not info.enabled:
        return obj
    box = [obj if info.rank == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Element-wise sum over ranks (in place; returns the tensor)."""
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor
