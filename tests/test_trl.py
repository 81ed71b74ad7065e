"""TRL trains the HRM as it trains any transformers causal LM: two GRPOTrainer steps in the GSPO setting (sequence-
level importance sampling, no KL term) on the CPU, for a tiny HRM and a tiny Llama, with gradient checkpointing on
(TRL's default) and a toy reward. TRL scores completions through the backbone and the output embeddings
(`model.base_model(...).last_hidden_state @ model.get_output_embeddings().weight.T`)."""

import functools
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.utils.checkpoint
import transformers.modeling_utils
import trl  # the dev extra installs it
from conftest import tiny_llama
from datasets import Dataset
from transformers import AutoTokenizer

from hrm_codegen.models import HrmCodegenForCausalLM

# TRL and the Trainer still use the names transformers renames in v6 (gradient -> activation checkpointing).
pytestmark = pytest.mark.filterwarnings("ignore:.*is deprecated and will be removed in v6:FutureWarning")


@pytest.fixture
def checkpointed_calls(monkeypatch) -> Counter[str]:
    """Counts, per module class, the calls made under gradient checkpointing: transformers checkpoints a layer's
    forward with `modeling_utils.checkpoint`, read when checkpointing is switched on (TRL switches it off and on
    again around generation)."""
    calls: Counter[str] = Counter()

    def counted(function: Callable, *args: Any, **kwargs: Any) -> Any:
        module = function.args[0] if isinstance(function, functools.partial) and function.args else function
        calls[type(module).__name__] += 1
        return torch.utils.checkpoint.checkpoint(function, *args, **kwargs)

    monkeypatch.setattr(transformers.modeling_utils, "checkpoint", counted)
    return calls


def tiny_hrm(vocab_size: int, tied: bool = False) -> HrmCodegenForCausalLM:
    return HrmCodegenForCausalLM(
        {
            "vocab_size": vocab_size,
            "seq_len": 64,
            "H_cycles": 2,
            "L_cycles": 2,
            "H_layers": 1,
            "L_layers": 1,
            "hidden_size": 32,
            "num_heads": 4,
            "expansion": 2.0,
            "tie_word_embeddings": tied,
        }
    )


def characters(completions: list[str], **_: Any) -> list[float]:
    """A toy reward: the completion's length in characters (it differs between sampled completions)."""
    return [float(len(text)) for text in completions]


@pytest.mark.parametrize(
    ("build", "checkpointed", "head"),
    [
        (tiny_hrm, "HierarchicalReasoningModel_ACTV1ReasoningModule", "lm_head"),
        (
            functools.partial(tiny_hrm, tied=True),
            "HierarchicalReasoningModel_ACTV1ReasoningModule",
            "embed_tokens",
        ),
        (tiny_llama, "LlamaDecoderLayer", "lm_head"),
    ],
    ids=["hrm", "hrm-tied", "llama"],
)
def test_two_gspo_steps_train_the_model_with_gradient_checkpointing(
    gpt2_dir, tmp_path, checkpointed_calls, build, checkpointed, head
):
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(gpt2_dir)
    model = build(len(tokenizer))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    config = trl.GRPOConfig(
        output_dir=str(tmp_path),
        importance_sampling_level="sequence",  # GSPO
        beta=0.0,
        use_cpu=True,
        max_steps=2,
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=8,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
    )
    assert config.gradient_checkpointing  # TRL's default
    prompts = Dataset.from_dict({"prompt": ["def add(a, b):", "def is_even(n):", "# sort a list\n", "x = ["]})
    trainer = trl.GRPOTrainer(
        model=model,
        reward_funcs=characters,
        args=config,
        train_dataset=prompts,
        processing_class=tokenizer,
    )
    trainer.train()
    assert trainer.state.global_step == 2
    assert checkpointed_calls[checkpointed] > 0, checkpointed_calls  # the layers (the HRM's: level calls)
    changed = [name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])]
    assert any(head in name for name in changed), changed  # the head TRL multiplies by
    assert any(".layers.0." in name for name in changed), changed
