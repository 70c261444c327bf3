"""The training engine: TRL's `SFTTrainer` (transformers' `Trainer` on accelerate), shaped by its extension points.

What the trainer gets from here, and why:
- `StudentTrainer.compute_loss`: the loss on labelled positions only, with the output layer applied to those rows
  alone (`batching.summed_token_loss`). SFTTrainer's own loss projects every position onto the vocabulary and
  computes entropy and token accuracy over it each step; with completion-only loss most positions are prompt or
  padding, so that is most of the output layer's work for nothing. The sum is divided by the trainer's
  `num_items_in_batch` - the target tokens of the whole optimizer step, over every micro-batch and every process -
  so one step is the step on the token-weighted mean loss of the global batch, whatever the accumulation and the
  number of processes.
- `GroupedSampler`: rows in batches of similar length (little padding), the same order on every process, drawn
  from the seed and the epoch alone: a resumed run draws exactly the batches the uninterrupted one would have.
  Each global batch is padded with weightless rows to full width - an equal share per process - so every process
  steps on every batch, batches keep their bounds, and the processes together see each global batch exactly as one
  process would.
- `rows_dataset` / `collate_rows`: the rows tokenised by `models.chat.tokenize_for_training` (loss on every
  assistant turn), right-padded, -100 where no loss is taken.
"""

from __future__ import annotations

import logging
import random
from typing import Any

from sftjudge.models.chat import TokenizedExample
from sftjudge.train.batching import collate, length_grouped_batches, summed_token_loss


def rows_dataset(rows: list[TokenizedExample], *, pack_to: int | None = None):
    """The rows as a `datasets.Dataset` of input_ids and labels, plus one weightless row at the end (the first
    row with every label -100), which pads a global batch: computed, but it carries no loss.

    With `pack_to`, rows are first packed by TRL's best-fit-decreasing packing into sequences of at most that many
    tokens (a `seq_lengths` column keeps each row's bounds: positions restart at every row and attention stays
    inside it); a "row" of the dataset is then one packed sequence.
    """
    from datasets import Dataset

    data = Dataset.from_dict({"input_ids": [r.input_ids for r in rows], "labels": [r.labels for r in rows]})
    if pack_to:
        from trl.data_utils import pack_dataset

        data = pack_dataset(data, pack_to, strategy="bfd")
    first = data[0]
    blank = TokenizedExample(first["input_ids"], first["labels"]).without_loss()
    return data.add_item(first | {"labels": blank.labels})


class GroupedSampler:
    """Length-grouped global batches of `batch_size` rows, flattened; a torch Sampler by shape.

    `accelerate` cuts the flat order into per-process micro-batches of batch_size / world rows and deals them out
    in turn, so the world processes of one step hold exactly one global batch between them.

    >>> s = GroupedSampler([5, 1, 4, 2, 3], batch_size=2, world=2, seed=0)
    >>> s.set_epoch(0); order = list(s)
    >>> len(order) == len(s) == 6 and sorted(i for i in order if i != 5) == [0, 1, 2, 3, 4]
    True
    >>> order.count(5)  # the last batch of one row is padded with the weightless row (index 5) for process 2
    1
    """

    def __init__(self, lengths: list[int], *, batch_size: int, world: int, seed: int):
        self.lengths, self.batch_size, self.world, self.seed = lengths, batch_size, world, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        rng = random.Random(f"{self.seed}:{self.epoch}")
        # Padded to full width also for one process: the trainer cuts the flat order into batches of its own, so a
        # short batch must still fill its slot or the next batch's rows would slide into it.
        width = self.per_process * self.world
        return [batch + [len(self.lengths)] * (width - len(batch))  # the weightless row
                for batch in length_grouped_batches(self.lengths, self.batch_size, rng)]

    @property
    def per_process(self) -> int:
        """Rows of a global batch each process takes (the trainer's per-device batch size)."""
        return -(-self.batch_size // self.world)

    def __iter__(self):
        return iter([i for batch in self.batches() for i in batch])

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size) * self.per_process * self.world


def collate_rows(pad_id: int, *, packed: bool = False):
    """The data collator: right-padded input_ids, attention_mask and labels (-100 on padding); for packed rows
    TRL's padding-free collator (one flat sequence, position_ids restarting at every row, no attention mask)."""
    if packed:
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

        return DataCollatorForLanguageModeling(pad_token_id=pad_id, padding_free=True)

    def collate_fn(batch: list[dict[str, list[int]]]) -> dict[str, Any]:
        ids, mask, labels = collate([TokenizedExample(r["input_ids"], r["labels"]) for r in batch], pad_id)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    return collate_fn


def _tokens(inputs) -> int:
    """Non-padding tokens of a batch, the weightless rows padding a global batch not counted."""
    mask = inputs.get("attention_mask")
    if mask is None:  # packed: one flat sequence of real tokens (a weightless row among them is counted)
        return int(inputs["input_ids"].numel())
    return int(mask[(inputs["labels"] != -100).any(dim=1)].sum())


def student_trainer_class():
    """`StudentTrainer`, built on call so that importing this module does not import TRL."""
    from trl import SFTTrainer

    class StudentTrainer(SFTTrainer):
        """SFTTrainer with the loss on labelled positions only and the sampler above; see the module docstring."""

        def __init__(self, *args, sampler: GroupedSampler, **kwargs):
            self.grouped_sampler = sampler
            super().__init__(*args, **kwargs)
            # The loss below divides by num_items_in_batch itself: let the trainer count it, never divide again.
            self.model_accepts_loss_kwargs = True
            self.step_records: list[tuple[float, int, int]] = []  # per micro-batch: loss sum, targets, tokens

        def _get_train_sampler(self, train_dataset=None):
            return self.grouped_sampler

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs["labels"]
            # Packed rows come flat with position_ids (and varlen-kernel bounds) instead of an attention mask.
            extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", "labels")}
            # Under the trainer's autocast: its model forward autocasts (and returns float32), the output layer
            # applied here to the labelled rows must compute in the same precision.
            with self.accelerator.autocast():
                loss_sum, targets = summed_token_loss(model, inputs["input_ids"], inputs.get("attention_mask"),
                                                      labels, output_layer=self._output_layer(), extra=extra)
            if not model.training:
                return loss_sum / max(targets, 1)
            self.step_records.append((float(loss_sum.detach()), targets, _tokens(inputs)))
            denominator = num_items_in_batch if num_items_in_batch is not None else max(targets, 1)
            loss = loss_sum / denominator
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes  # the all-reduce averages over processes
            return loss

        def _output_layer(self):
            return self.accelerator.unwrap_model(self.model).get_output_embeddings()

        def create_model_card(self, *args, **kwargs):
            """No README.md in the checkpoint folder: the run's report is the model's card (`sftjudge export`)."""

    return StudentTrainer


def training_arguments(sft, staging: str, *, world: int, steps_total: int, bf16: bool, fp16: bool):
    """trl.SFTConfig for the sft settings: per-process batch, accumulation, schedule, precision, checkpointing,
    FSDP for a full fine-tune across processes. No evaluation, logging or saving strategy of the trainer's own
    beyond an epoch checkpoint: the epoch callback measures and publishes (train/loop.py)."""
    import torch
    from trl import SFTConfig as TrlConfig

    cuda = torch.cuda.is_available()
    fsdp = {}
    if sft.fsdp:
        fsdp = {"fsdp": "full_shard auto_wrap",
                "fsdp_config": {"version": 2, "reshard_after_forward": True,
                                "auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "state_dict_type": "FULL_STATE_DICT",
                                "cpu_ram_efficient_loading": False}}
    args = TrlConfig(
        output_dir=staging, num_train_epochs=sft.epochs, per_device_train_batch_size=-(-sft.batch_size // world),
        gradient_accumulation_steps=sft.grad_accum, learning_rate=sft.learning_rate, weight_decay=sft.weight_decay,
        lr_scheduler_type="linear", warmup_steps=int(sft.warmup_ratio * steps_total), max_grad_norm=1.0,
        optim="adamw_torch", seed=sft.seed, data_seed=sft.seed, bf16=bf16, fp16=fp16, use_cpu=not cuda,
        gradient_checkpointing=sft.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if sft.gradient_checkpointing else None,
        save_strategy="epoch", save_only_model=False, eval_strategy="no", logging_strategy="epoch",
        report_to="none", disable_tqdm=False, dataloader_num_workers=0, dataloader_pin_memory=cuda,
        remove_unused_columns=False, max_length=None, packing=False, dataset_kwargs={"skip_prepare_dataset": True},
        average_tokens_across_devices=True,
        ddp_find_unused_parameters=False, **fsdp)
    if world == 1 and args.n_gpu > 1:
        # One process that sees several cards is wrapped in nn.DataParallel by the Trainer, which multiplies the
        # global batch by the cards and changes the schedule without a word. Several cards are num_processes'.
        logging.getLogger("sftjudge").warning(
            "this process sees %d GPUs and trains on one; set sft.num_processes: %d to train on all of them",
            args.n_gpu, args.n_gpu)
        args._n_gpu = 1
    return args
