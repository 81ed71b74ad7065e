"""Decoding in which finished rows leave the batch gives exactly the tokens of transformers' generate."""

import pytest
import torch
from conftest import tiny_llama
from test_generation import decode, padded_prompts  # the same fake decoder and prompts as the reference tests

from hrm_codegen.generation import generate
from hrm_codegen.models import HierarchicalReasoningModel_ACTV1


def tiny_hrm(config: dict, **overrides) -> HierarchicalReasoningModel_ACTV1:
    torch.manual_seed(0)
    return HierarchicalReasoningModel_ACTV1({**config, **overrides}).eval()


class Counting:
    """Wraps a model and counts the rows of every forward call."""

    def __init__(self, model):
        self.model, self.rows = model, []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, **kwargs):
        self.rows.append(kwargs["input_ids"].shape[0])
        return self.model(**kwargs)


@pytest.mark.parametrize("family", ["hrm", "hrm_prefix_lm", "llama"])
@pytest.mark.parametrize("do_sample", [False, True], ids=["greedy", "sampled"])
def test_pruned_decoding_equals_transformers_generate(tiny_hrm_config, family, do_sample):
    if family == "llama":
        torch.manual_seed(0)
        model = tiny_llama().eval()
    else:
        model = tiny_hrm(tiny_hrm_config, halt_max_steps=2, prefix_lm=family == "hrm_prefix_lm")
    ids, mask = padded_prompts([9, 4, 1, 6])
    prefix = mask.bool() if family == "hrm_prefix_lm" else None
    # EOS and a stop string end some rows early, the budget the others
    options = dict(
        max_new_tokens=8,
        eos_token_id=5,
        stop_strings=["\n"],
        tokenizer=decode,
        do_sample=do_sample,
        temperature=1.3,
        seed=[11, 12, 13, 14] if do_sample else None,
        prefix_mask=prefix,
    )
    pruned = generate(model, ids, mask, **options)
    reference = generate(model, ids, mask, prune_finished=False, **options)
    assert pruned.completion_ids == reference.completion_ids
    assert pruned.finish_reasons == reference.finish_reasons
    assert pruned.texts == reference.texts
    assert len({len(c) for c in pruned.completion_ids}) > 1, "the rows should finish at different steps"


def test_finished_rows_stop_costing_compute(tiny_hrm_config):
    model = tiny_hrm(tiny_hrm_config)
    ids, mask = padded_prompts([9, 4, 1, 6], seed=3)
    counting = Counting(model)
    out = generate(counting, ids, mask, max_new_tokens=20, stop_strings=["\n"], tokenizer=decode)
    lengths = [len(c) for c in out.completion_ids]  # a stop string's tokens are part of the completion ids
    assert counting.rows[0] == 4
    # each step runs only the rows that have not finished: step t has as many rows as completions longer than t
    assert counting.rows == [sum(length > t for length in lengths) for t in range(len(counting.rows))]
    assert counting.rows[-1] < 4


def test_streamer_gets_the_prompt_then_each_new_token(tiny_hrm_config):
    model = tiny_hrm(tiny_hrm_config)
    ids, mask = padded_prompts([5])

    class Collect:
        def __init__(self):
            self.parts, self.ended = [], False

        def put(self, value):
            self.parts.append(value.tolist())

        def end(self):
            self.ended = True

    streamer = Collect()
    out = generate(model, ids, mask, max_new_tokens=6, streamer=streamer)
    assert streamer.parts[0] == ids.tolist()
    assert [p[0] for p in streamer.parts[1:]] == out.sequences[0, ids.shape[1] :].tolist()
    assert streamer.ended
