"""Prompt lookup decoding (`generate(prompt_lookup=N)`): the greedy tokens of plain decoding in fewer forwards,
for the HRM (one and two ACT segments, two gated L cycles) and a transformers Llama; the settings it cannot
run with are refused with one line."""

import pytest
import torch
from conftest import tiny_llama
from test_generation import decode, padded_prompts  # the fake decoder and prompts of the reference tests

from hrm_codegen.generation import generate
from hrm_codegen.models import HierarchicalReasoningModel_ACTV1


def tiny_model(family: str, config: dict):
    torch.manual_seed(0)
    if family == "llama":
        return tiny_llama().eval()
    overrides = {"halt_max_steps": 2} if family == "hrm_2_segments" else {"L_cycles": 2}
    return HierarchicalReasoningModel_ACTV1({**config, **overrides}).eval()


def forwards(model) -> list[int]:
    """Counts the model's forward calls (one per list entry) through a hook."""
    calls: list[int] = []
    model.register_forward_hook(lambda *_: calls.append(1))
    return calls


def repetitive_prompts() -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompts that repeat a pattern, so that their 2-grams recur (drafts to verify)."""
    ids, mask = padded_prompts([12, 7, 10])
    ids[0, -12:] = torch.tensor([3, 4, 8, 9, 3, 4, 8, 9, 3, 4, 8, 9])
    return ids, mask


@pytest.mark.parametrize("family", ["hrm_2_segments", "hrm_2_L_cycles", "llama"])
def test_prompt_lookup_gives_the_greedy_tokens_in_fewer_forwards(tiny_hrm_config, family):
    model = tiny_model(family, tiny_hrm_config)
    ids, mask = repetitive_prompts()
    # EOS, a stop string and the budget end the rows
    options = dict(max_new_tokens=24, eos_token_id=5, stop_strings=["\n\n"], tokenizer=decode)
    plain = generate(model, ids, mask, **options)
    calls = forwards(model)
    looked_up = generate(model, ids, mask, prompt_lookup=4, **options)
    assert looked_up.completion_ids == plain.completion_ids
    assert looked_up.finish_reasons == plain.finish_reasons
    assert looked_up.texts == plain.texts
    assert torch.equal(looked_up.sequences[:, : ids.shape[1]], ids)
    tokens = sum(
        len(c) + (r == "eos") for c, r in zip(plain.completion_ids, plain.finish_reasons, strict=True)
    )
    assert tokens > 20
    assert len(calls) < tokens, f"{len(calls)} forwards for {tokens} tokens: no draft was accepted"


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (dict(do_sample=True, temperature=0.8), "do_sample=True"),
        (dict(num_beams=2), "num_beams > 1"),
        (dict(compile=True), "compile=True"),
        (dict(use_cache=False), "use_cache=False"),
        (dict(prompt_lookup=-1), "prompt_lookup must be >= 0"),
    ],
    ids=["sampling", "beams", "compile", "no-cache", "negative"],
)
def test_prompt_lookup_refuses_what_it_cannot_run(tiny_hrm_config, options, named):
    model = tiny_model("hrm_2_L_cycles", tiny_hrm_config)
    ids, mask = repetitive_prompts()
    with pytest.raises(ValueError, match=named.replace("(", r"\(").replace("+", r"\+")) as err:
        generate(model, ids, mask, max_new_tokens=4, **{"prompt_lookup": 3, **options})
    assert len(str(err.value).splitlines()) == 1


def test_prompt_lookup_refuses_prefix_lm(tiny_hrm_config):
    model = tiny_model("hrm_2_L_cycles", {**tiny_hrm_config, "prefix_lm": True})
    ids, mask = repetitive_prompts()
    with pytest.raises(ValueError, match="prefix_mask"):
        generate(model, ids, mask, max_new_tokens=4, prompt_lookup=3, prefix_mask=mask.bool())
