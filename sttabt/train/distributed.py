"""Process group set-up for ``torchrun`` (gloo on CPU, nccl on GPU) and a plain single process.

A process that fails records it in the group's key-value store (:meth:`Dist.announce_failure`), so
that the others, whose next collective then fails ("Connection closed by peer"), can tell a peer's
failure (:meth:`Dist.peer_failure`) from their own and stop with one line instead of a traceback."""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """True on the process that writes logs and checkpoints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def announce_failure(self, what: str) -> None:
        """Tell the other processes that this one is stopping (best effort: never raises)."""
        store = _store() if self.enabled else None
        if store is not None:
            try:
                store.set(f"{FAILURE_KEY}/{self.rank}", what)
            except Exception:  # the store's host may be gone already
                pass

    def peer_failure(self) -> str | None:
        """What another process announced before stopping, or None."""
        store = _store() if self.enabled else None
        if store is None:
            return None
        for rank in range(self.world):
            key = f"{FAILURE_KEY}/{rank}"
            try:
                if rank != self.rank and store.check([key]):
                    return store.get(key).decode()
            except Exception:
                return None
        return None

    def failure_of(self, rank: int, wait: timedelta) -> str | None:
        """What process ``rank`` announced, waiting up to ``wait`` for it; None when it announced nothing."""
        store = _store() if self.enabled else None
        if store is None:
            return None
        try:
            store.wait([f"{FAILURE_KEY}/{rank}"], wait)
            return store.get(f"{FAILURE_KEY}/{rank}").decode()
        except Exception:  # nothing announced in time (or the store is gone)
            return None

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum of ``t`` over processes (in place on a copy); identity for one process."""
        t = t.detach().clone()
        if self.enabled:
            on = t.to(self.device) if self.device.type == "cuda" else t
            dist.all_reduce(on)
            t = on.to(t.device)
        return t


FAILURE_KEY = "sttabt_failed"
STORE_TIMEOUT = timedelta(seconds=5)


def _store():
    try:
        store = dist.distributed_c10d._get_default_store()
        store.set_timeout(STORE_TIMEOUT)
        return store
    except Exception:  # no default group, or a torch without this (private) accessor
        return None


def setup(device: str | None = None) -> Dist:
    """Read torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) and join the group."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    return Dist(rank, world, local_rank, device)


def teardown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()
