"""Data-parallel training under `accelerate launch`: which process this is, its shard, and sums over all of them.

A process that no launcher started (no WORLD_SIZE above 1 in its environment) gets `Ranks()`: one process,
rank 0, sums of one number, no process group. Under `accelerate launch --multi_gpu --num_processes N` (torchrun
underneath) the N processes join one group through accelerate's `PartialState`: NCCL between GPUs, gloo between CPU
processes on a machine without CUDA. The trainer (train/engine.py) runs its data parallelism - DDP, or FSDP - in
that group; what is here is what the sft stage does around it: who writes, sums of measured losses, barriers.
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass
from typing import Any


def launched() -> bool:
    """True in one of several processes started by a distributed launcher (torchrun, `accelerate launch`)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@dataclass(frozen=True)
class Ranks:
    """This process's place among the data-parallel processes; `Ranks()` is the single-process case."""

    world: int = 1
    rank: int = 0
    state: Any = None  # accelerate's PartialState: the process group the trainer's Accelerator joins too

    @property
    def is_main(self) -> bool:
        """The one process that writes checkpoints, metrics and the run directory."""
        return self.rank == 0

    def shard(self, items: list) -> list:
        """This rank's share of `items`: every world-th item starting at its rank.

        Shards differ by at most one item and, `items` being length-grouped, carry similar lengths.

        >>> Ranks(2, 1).shard([10, 11, 12, 13, 14])
        [11, 13]
        >>> Ranks().shard([10, 11])
        [10, 11]
        """
        return items[self.rank::self.world] if self.world > 1 else items

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sums of `values` over all processes; every rank gets the same numbers back."""
        if self.world == 1:
            return list(values)
        import torch
        import torch.distributed as dist

        # float64: token counts and summed losses of a large split stay exact well past float32's 2**24.
        tensor = torch.tensor(values, dtype=torch.float64, device=self.state.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.tolist()

    def wait(self) -> None:
        """Barrier: returns when every process got here (e.g. after the main process wrote a checkpoint)."""
        if self.world > 1:
            self.state.wait_for_everyone()

    @contextlib.contextmanager
    def main_first(self):
        """The main process runs the body first (e.g. building a model cache); the others then find it done."""
        if not self.is_main:
            self.wait()
        yield
        if self.is_main:
            self.wait()

    def finish(self) -> None:
        """Wait for every process, then leave the process group (call once, at the end of a launched script)."""
        if self.world > 1:
            self.state.wait_for_everyone()
            self.state.destroy_process_group()


def current() -> Ranks:
    """The data-parallel layout of this process: `Ranks()` unless started by a launcher with WORLD_SIZE > 1.

    Call it before moving the model to a device: joining the group selects this process's GPU.
    """
    if not launched():
        return Ranks()
    state = _process_group()
    return Ranks(state.num_processes, state.process_index, state)


@functools.cache
def _process_group():
    import torch
    from accelerate import PartialState

    # Without CUDA the processes train on CPU over gloo (how the data-parallel path is tested on CPU machines).
    # Only the process group: the trainer's own Accelerator joins it with the run's precision settings.
    return PartialState(cpu=not torch.cuda.is_available())
