"""The training losses: pre-shifted next-token CE, stablemax from its definition, and the ACT terms."""

import math

import pytest
import torch
import torch.nn.functional as F

from hrm_codegen.losses_codegen import (
    codegen_loss,
    lm_loss,
    log_stablemax,
    stablemax_s,
    token_cross_entropy,
)
from hrm_codegen.models import HierarchicalReasoningModel_ACTV1


def test_labels_are_not_shifted_again():
    """logits[i] is scored against labels[i]: logits peaked on labels[i] give ~0 loss, shifted ones do not."""
    labels = torch.tensor([[3, 1, 4, 1, 5, -100]])
    logits = torch.full((1, 6, 8), -20.0)
    for i, label in enumerate(labels[0].tolist()):
        if label >= 0:
            logits[0, i, label] = 20.0
    assert lm_loss(logits, labels).item() < 1e-6
    assert lm_loss(logits[:, 1:], labels[:, :-1]).item() > 10


def test_softmax_loss_is_the_mean_over_target_tokens():
    """Ignored positions (-100) count neither in the sum nor in the divisor."""
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    labels = torch.tensor([[1, 2, -100, -100, -100], [3, 4, 5, 6, -100]])
    expected = F.cross_entropy(logits.view(-1, 11), labels.view(-1), ignore_index=-100)
    assert torch.allclose(lm_loss(logits, labels), expected)
    per_token = token_cross_entropy(logits, labels)
    assert torch.all(per_token[labels == -100] == 0)
    assert torch.allclose(per_token.sum() / 6, expected)


def test_stablemax_follows_its_definition():
    """s(x) = x + 1 for x >= 0 and 1 / (1 - x) below; log-probabilities are float64 and normalised."""
    x = torch.tensor([-3.0, -0.5, 0.0, 0.5, 2.0])
    assert torch.allclose(stablemax_s(x), torch.tensor([0.25, 1 / 1.5, 1.0, 1.5, 3.0]))
    logits = torch.tensor([[-3.0, -0.5, 0.0, 0.5, 2.0]])
    logp = log_stablemax(logits)
    assert logp.dtype == torch.float64
    s = [0.25, 1 / 1.5, 1.0, 1.5, 3.0]
    manual = [math.log(v / sum(s)) for v in s]
    assert torch.allclose(logp[0], torch.tensor(manual, dtype=torch.float64))


def test_stablemax_cross_entropy_matches_manual_and_has_finite_gradients():
    """The stablemax CE of a target is -log(s(x_y) / sum s(x)); huge negative logits keep gradients finite."""
    logits = torch.tensor([[[1e6, -1e6, 0.0], [2.0, -1.0, 0.5]]], requires_grad=True)
    labels = torch.tensor([[1, 0]])
    loss = token_cross_entropy(logits, labels, "stablemax")
    s0 = [1e6 + 1, 1 / (1 + 1e6), 1.0]
    s1 = [3.0, 0.5, 1.5]
    expected = torch.tensor([[-math.log(s0[1] / sum(s0)), -math.log(s1[0] / sum(s1))]])
    assert torch.allclose(loss.double(), expected.double(), rtol=1e-5)
    loss.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_unknown_loss_type_is_rejected():
    with pytest.raises(ValueError, match="loss_type"):
        token_cross_entropy(torch.zeros(1, 1, 2), torch.zeros(1, 1, dtype=torch.long), "sparsemax")


def test_q_halt_target_is_sequence_fully_right():
    """Q-halt BCE targets 1 for a sequence whose every target token is argmax-right, 0 otherwise."""
    labels = torch.tensor([[1, 2, -100], [1, 2, -100]])
    logits = torch.zeros(2, 3, 4)
    logits[0, 0, 1] = logits[0, 1, 2] = 5.0  # sequence 0: all right
    logits[1, 0, 1] = logits[1, 1, 3] = 5.0  # sequence 1: second token wrong
    q_halt = torch.tensor([0.3, -0.7])
    out = codegen_loss(
        {"logits": logits, "q_halt_logits": q_halt, "q_continue_logits": torch.zeros(2)}, labels
    )
    expected = F.binary_cross_entropy_with_logits(q_halt, torch.tensor([1.0, 0.0]), reduction="sum")
    assert torch.allclose(out.q_halt_sum, expected)
    assert out.q_continue_sum is None  # no bootstrap target, no Q-continue term
    assert out.correct_tokens.item() == 3 and out.num_tokens.item() == 4


def test_act_objective_weights_as_upstream():
    """objective = lm mean + 0.5 * (q_halt + q_continue), the Q terms averaged over sequences."""
    torch.manual_seed(1)
    logits = torch.randn(3, 4, 7)
    labels = torch.randint(0, 7, (3, 4))
    labels[0, :2] = -100
    outputs = {
        "logits": logits,
        "q_halt_logits": torch.randn(3),
        "q_continue_logits": torch.randn(3),
        "target_q_continue": torch.rand(3),
    }
    out = codegen_loss(outputs, labels)
    lm = F.cross_entropy(logits.view(-1, 7), labels.view(-1), ignore_index=-100)
    seq_right = ((logits.argmax(-1) == labels) | (labels == -100)).all(-1).float()
    q_halt = F.binary_cross_entropy_with_logits(outputs["q_halt_logits"], seq_right)
    q_cont = F.binary_cross_entropy_with_logits(outputs["q_continue_logits"], outputs["target_q_continue"])
    total = out.objective(out.num_tokens, 3)
    assert torch.allclose(total, lm + 0.5 * (q_halt + q_cont), atol=1e-6)


def test_objective_split_over_micro_batches_equals_the_whole_batch():
    """Normalising each part by the global counts makes the parts sum to the whole (data parallel, accumulation)."""
    torch.manual_seed(2)
    logits = torch.randn(4, 6, 9)
    labels = torch.randint(0, 9, (4, 6))
    labels[1, 3:] = -100
    labels[2, :5] = -100
    q = {
        "q_halt_logits": torch.randn(4),
        "q_continue_logits": torch.randn(4),
        "target_q_continue": torch.rand(4),
    }
    whole = codegen_loss({"logits": logits, **q}, labels)
    total = whole.objective(whole.num_tokens, 4)
    parts = [
        codegen_loss({"logits": logits[s], **{k: v[s] for k, v in q.items()}}, labels[s])
        for s in (slice(0, 1), slice(1, 4))
    ]
    assert torch.allclose(sum(p.objective(whole.num_tokens, 4) for p in parts), total, atol=1e-6)


def test_act_loss_trains_the_q_head_through_the_model(tiny_hrm_config):
    """With the Q-head on and halt_max_steps > 1 the model yields the bootstrap target and all terms backprop."""
    torch.manual_seed(0)
    model = HierarchicalReasoningModel_ACTV1({**tiny_hrm_config, "enable_q_head": True, "halt_max_steps": 3})
    model.train()
    ids = torch.randint(0, tiny_hrm_config["vocab_size"], (2, 10))
    batch = {"input_ids": ids, "labels": torch.cat([ids[:, 1:], torch.full((2, 1), -100)], 1)}
    carry, outputs = model(model.initial_carry(batch), batch)
    assert "target_q_continue" in outputs
    out = codegen_loss(outputs, carry.current_data["labels"], "stablemax")
    assert out.q_halt_sum is not None and out.q_continue_sum is not None
    out.objective(out.num_tokens, 2).backward()
    assert model.model.q_head.weight.grad is not None and model.model.q_head.weight.grad.abs().sum() > 0
