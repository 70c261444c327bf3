"""Data-parallel training under `accelerate launch`: which process this is, its shard, and sums over all of them.

A process that no launcher started (no WORLD_SIZE above 1 in its environment) gets `Ranks()`: one process,
rank 0, sums of one number, no Accelerator and no process group - a plain run behaves exactly as before. Under
`accelerate launch --multi_gpu --num_processes N` (torchrun underneath) the N processes join one group through
accelerate's `Accelerator`: NCCL between GPUs, gloo between CPU processes on a machine without CUDA.
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
    accelerator: Any = None

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

        # float64: token counts and summed losses of a large split stay exact well past float32's 2**24.
        tensor = torch.tensor(values, dtype=torch.float64, device=self.accelerator.device)
        return self.accelerator.reduce(tensor, reduction="sum").tolist()

    def wrap(self, model):
        """What training steps run through: the model itself, or a DDP view of it that all-reduces gradients."""
        if self.world == 1:
            return model
        return StepModel(self.accelerator.prepare_model(model), model)

    def no_sync(self, step_model, skip: bool):
        """Context for a micro-batch whose gradients only accumulate: no all-reduce until the optimizer step."""
        if self.world == 1 or not skip:
            return contextlib.nullcontext()
        return self.accelerator.no_sync(step_model.ddp)

    def wait(self) -> None:
        """Barrier: returns when every process got here (e.g. after the main process wrote a checkpoint)."""
        if self.world > 1:
            self.accelerator.wait_for_everyone()

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
            self.accelerator.wait_for_everyone()
            self.accelerator.end_training()


class StepModel:
    """A DDP-wrapped model seen the way `batching.summed_token_loss` uses a model.

    The forward must go through DDP - that is what arms the gradient all-reduce of the coming backward - but
    the loss applies the output layer itself (to target positions only), and DDP does not expose
    `get_output_embeddings`; it is taken from the wrapped model, whose parameters DDP shares.
    """

    def __init__(self, ddp, model):
        self.ddp = ddp
        self.model = model

    def __call__(self, *args, **kwargs):
        return self.ddp(*args, **kwargs)

    def get_output_embeddings(self):
        return self.model.get_output_embeddings()


def current() -> Ranks:
    """The data-parallel layout of this process: `Ranks()` unless started by a launcher with WORLD_SIZE > 1.

    Call it before moving the model to a device: joining the group selects this process's GPU.
    """
    if not launched():
        return Ranks()
    accelerator = _accelerator()
    return Ranks(accelerator.num_processes, accelerator.process_index, accelerator)


@functools.cache
def _accelerator():
    import torch
    from accelerate import Accelerator

    # Without CUDA the processes train on CPU over gloo (how the data-parallel path is tested on CPU machines).
    # Mixed precision stays sft.precision's (device.autocast) whatever the launcher's --mixed_precision says.
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision="no")
