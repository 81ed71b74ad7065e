"""Training losses: next-token cross-entropy (softmax or stablemax) and the HRM's ACT (Q-learning) loss.

Labels are pre-shifted by the dataset (`labels[i]` is the target of the logits at position i, -100 =
ignored), so nothing here shifts. Losses are returned as sums with their counts, so that a caller can
normalise over a whole global batch (all micro-batches and all processes) and get the same result as one
big batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
LOSS_TYPES = ("softmax", "stablemax")
Q_LOSS_WEIGHT = 0.5  # upstream: total = lm + 0.5 * (q_halt + q_continue)


def stablemax_s(x: torch.Tensor) -> torch.Tensor:
    """The stablemax map s(x) = x + 1 for x >= 0 and 1 / (1 - x) for x < 0 (positive, monotone)."""
    return torch.where(x >= 0, x + 1, 1 / (1 - torch.clamp(x, max=0)))


def log_stablemax(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Log-probabilities log(s(x_i) / sum_j s(x_j)), computed in float64 as upstream does."""
    s = stablemax_s(logits.to(torch.float64))
    return torch.log(s) - torch.log(s.sum(dim=dim, keepdim=True))


def token_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, loss_type: str = "softmax"
) -> torch.Tensor:
    """Per-token cross-entropy [B, S] in float32; 0 where the label is -100."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    valid = labels != IGNORE_INDEX
    if loss_type == "softmax":
        flat = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(),
            labels.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="none",
        )
        return flat.view(labels.shape)
    logprobs = log_stablemax(logits)
    picked = logprobs.gather(-1, torch.where(valid, labels, 0).unsqueeze(-1)).squeeze(-1)
    return torch.where(valid, -picked, 0).float()


@dataclass
class LossOutput:
    """Summed loss terms of one micro-batch; `objective()` normalises them over a (global) batch."""

    lm_sum: torch.Tensor  # summed token cross-entropy (differentiable)
    num_tokens: torch.Tensor  # number of target tokens (labels != -100)
    correct_tokens: torch.Tensor  # argmax == label among the target tokens
    num_sequences: int
    q_sum: torch.Tensor | None = None  # summed Q-halt + Q-continue BCE over the sequences (differentiable)
    q_halt_sum: torch.Tensor | None = None  # the Q-halt part, detached
    q_continue_sum: torch.Tensor | None = None  # the Q-continue part, detached
    # another per-token objective's sum (differentiable; the HRM's exit gate)
    extra_sum: torch.Tensor | None = None
    # Per-token sums to log, detached: the Trainer logs each summed over the global batch / its target tokens
    metric_sums: dict[str, torch.Tensor] = field(default_factory=dict)

    def objective(self, total_tokens: float | torch.Tensor, total_sequences: int) -> torch.Tensor:
        """(lm_sum + extra_sum) / total_tokens + 0.5 * q_sum / total_sequences: this micro-batch's share of the
        batch loss."""
        loss = self.lm_sum / total_tokens
        if self.extra_sum is not None:
            loss = loss + self.extra_sum / total_tokens
        if self.q_sum is not None:
            loss = loss + Q_LOSS_WEIGHT * self.q_sum / total_sequences
        return loss


def lm_loss(logits: torch.Tensor, labels: torch.Tensor, loss_type: str = "softmax") -> torch.Tensor:
    """Next-token cross-entropy averaged over the target tokens."""
    valid = labels != IGNORE_INDEX
    return token_cross_entropy(logits, labels, loss_type).sum() / valid.sum().clamp_min(1)


def codegen_loss(
    outputs: dict[str, torch.Tensor], labels: torch.Tensor, loss_type: str = "softmax"
) -> LossOutput:
    """LM loss terms, plus the ACT terms when `outputs` carries Q-head logits.

    Q-halt: BCE of `q_halt_logits` against "every target token of the sequence predicted right".
    Q-continue (only when `outputs` has `target_q_continue`): BCE against that bootstrap target.
    """
    logits = outputs["logits"]
    valid = labels != IGNORE_INDEX
    with torch.no_grad():
        hits = (logits.argmax(-1) == labels) & valid
    result = LossOutput(
        lm_sum=token_cross_entropy(logits, labels, loss_type).sum(),
        num_tokens=valid.sum(),
        correct_tokens=hits.sum(),
        num_sequences=labels.shape[0],
    )
    if "q_halt_logits" not in outputs:
        return result
    seq_correct = (hits.sum(-1) == valid.sum(-1)) & valid.any(-1)
    q_sum = F.binary_cross_entropy_with_logits(
        outputs["q_halt_logits"], seq_correct.to(torch.float32), reduction="sum"
    )
    result.q_halt_sum = q_sum.detach()
    if "target_q_continue" in outputs:
        q_continue = F.binary_cross_entropy_with_logits(
            outputs["q_continue_logits"], outputs["target_q_continue"], reduction="sum"
        )
        result.q_continue_sum = q_continue.detach()
        q_sum = q_sum + q_continue
    result.q_sum = q_sum
    return result
