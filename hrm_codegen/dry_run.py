"""The dry-run report of a training set-up (`dry_run=true`): sizes, parameter counts, one real step.

It reads a `hrm_codegen.training.Trainer` (typed loosely: this module must not import the loop back)."""

from __future__ import annotations

from typing import Any

import torch

from hrm_codegen.datasets.batching import PackedDataset
from hrm_codegen.families.base import parameter_counts


def dry_run_report(trainer: Any) -> str:
    """One forward and backward on one real batch; a report of sizes and parameter counts (writes nothing)."""
    self = trainer
    batch = next(self._micro_batches(0))
    model = self.accelerator.unwrap_model(self.model)
    self.model.train()
    state = self.family.new_train_state(self.model_config, self.cfg.train)
    state.prepare(model, batch)
    out = self.family.forward_loss(self.model, batch, state, self.cfg.train.loss_type)
    loss = out.objective(max(int(out.num_tokens), 1), batch["input_ids"].shape[0])
    self.accelerator.backward(loss)
    grad_norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
    self.optimizer.zero_grad(set_to_none=True)
    counts = parameter_counts(model)
    decayed, undecayed = (sum(p.numel() for p in g["params"]) for g in self.optimizer.param_groups)
    cfg, train = self.cfg, self.cfg.train
    return "\n".join(
        [
            f"tokenizer: {self.tokenizer.name_or_path} (vocab {self.tokenizer.vocab_size}, "
            f"fingerprint {self.tokenizer.fingerprint[:12]})",
            f"data: {cfg.data.name}, {_train_size(self)} / {len(self.eval_data)} "  # type: ignore[arg-type]
            f"{cfg.data.eval_split} examples of at most {cfg.data.seq_len} tokens; {self.total_steps} steps of "
            f"{train.global_batch_size} sequences ({self.world} process(es) x {train.grad_accum} accumulation x "
            f"{self.micro_batch_size})",
            f"model: arch.name={cfg.arch.name}, parameters by component:",
            *(f"  {name:<14}{count:>14,}" for name, count in counts.items()),
            *self.family.report_lines(self.model_config, counts["total"]),
            f"optimizer: AdamW, {decayed:,} parameters with weight decay {train.weight_decay}, {undecayed:,} without",
            f"one batch {list(batch['input_ids'].shape)}: loss {loss.item():.4f}, gradient norm {float(grad_norm):.4f}",
        ]
    )


def _train_size(self: Any) -> str:
    """The size of the training data for the dry-run report: examples, or packed blocks and their examples."""
    data = self.train_data
    if isinstance(data, PackedDataset):
        return f"{len(data)} packed train blocks ({data.num_examples} examples)"
    return f"{len(data)} train"  # type: ignore[arg-type]
