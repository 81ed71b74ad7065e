"""The HRM's KV cache is a transformers `Cache` with one layer (slot) per (segment, H cycle, L cycle, level,
layer) attention call: static == dynamic == full recomputation; a step with another layout of calls is refused;
the compiled decoding step equals the eager one."""

import time

import pytest
import torch
from test_generation import (  # the same tiny models and prompts as the reference tests
    make_model,
    padded_prompts,
)
from transformers import DynamicCache, StaticCache

from hrm_codegen.generation import generate


@pytest.mark.parametrize("halt_max_steps", [1, 2])
@pytest.mark.parametrize("lengths", [[6, 6], [9, 4, 1]], ids=["no-padding", "left-padding"])
def test_static_equals_dynamic_equals_full_recompute(tiny_hrm_config, halt_max_steps, lengths):
    model = make_model(tiny_hrm_config, halt_max_steps=halt_max_steps)
    ids, mask = padded_prompts(lengths)
    kwargs = dict(max_new_tokens=10, return_logits=True)
    static = generate(model, ids, mask, cache_implementation="static", **kwargs)
    dynamic = generate(model, ids, mask, cache_implementation="dynamic", **kwargs)
    full = generate(model, ids, mask, use_cache=False, **kwargs)
    assert torch.equal(static.sequences, full.sequences)
    assert torch.equal(dynamic.sequences, full.sequences)
    assert static.logits is not None and dynamic.logits is not None and full.logits is not None
    torch.testing.assert_close(static.logits, full.logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(dynamic.logits, full.logits, atol=1e-4, rtol=0)


def test_rows_that_run_out_of_positions_first_keep_their_completions(tiny_hrm_config):
    """A row that fills the model's positions stops there while the others go on (static cache and none)."""
    model = make_model(tiny_hrm_config, seq_len=20, halt_max_steps=2)
    ids, mask = padded_prompts([12, 3])  # row 0 runs out of positions after 8 tokens, row 1 goes on
    static = generate(model, ids, mask, max_new_tokens=14, cache_implementation="static")
    full = generate(model, ids, mask, max_new_tokens=14, use_cache=False)
    assert static.completion_ids == full.completion_ids
    assert [len(c) for c in static.completion_ids] == [8, 14]


def test_one_slot_per_attention_call(tiny_hrm_config):
    """Slots follow the call order of a segment: L calls then the H call per H cycle, layer by layer."""
    model = make_model(tiny_hrm_config, halt_max_steps=2)
    cfg, inner = model.config, model.model
    assert inner.cache_slot(0, 0, 0, "L") == 0
    assert inner.cache_slot(0, 0, 1, "L") == cfg.L_layers
    assert inner.cache_slot(0, 0, None, "H") == cfg.L_cycles * cfg.L_layers
    assert inner.cache_slot(1, 0, 0, "L") == cfg.layer_evals_per_segment
    ids, mask = padded_prompts([5, 3])
    cache = DynamicCache()
    model.lm_forward(ids, mask, cache=cache)
    assert len(cache.layers) == cfg.num_hidden_layers == 2 * cfg.layer_evals_per_segment


def test_a_step_with_another_layout_of_calls_is_refused(tiny_hrm_config):
    model = make_model(tiny_hrm_config, halt_max_steps=1)
    ids, mask = padded_prompts([5, 3])
    one = torch.ones(2, 1, dtype=torch.long)
    full_mask = torch.cat([mask, one], 1)
    cache = DynamicCache()
    model.lm_forward(ids, mask, cache=cache)
    with pytest.raises(RuntimeError, match="every step must make the prefill's attention calls"):
        model.lm_forward(one, full_mask, cache=cache, num_segments=2)  # a second segment's calls
    cache = DynamicCache()
    model.lm_forward(ids, mask, cache=cache)
    model.set_cycles(model.config.H_cycles, model.config.L_cycles + 1)
    with pytest.raises(RuntimeError, match="every step must make the prefill's attention calls"):
        model.lm_forward(one, full_mask, cache=cache)  # other cycles than at the prefill


def test_a_static_cache_without_a_slot_per_call_is_refused(tiny_hrm_config):
    model = make_model(tiny_hrm_config, halt_max_steps=2)
    ids, mask = padded_prompts([5, 3])
    small = model.config.__class__(**{**model.config.arch_dict(), "halt_max_steps": 1})
    with pytest.raises(ValueError, match="one slot per"):
        model.lm_forward(ids, mask, cache=StaticCache(config=small, max_cache_len=16))


def test_a_decoding_steps_inputs_have_the_same_strides_at_every_length(tiny_hrm_config):
    """A compiled step guards on its inputs' strides: a one-row slice of the growing sequence keeps the sequence's
    length as its row stride (it counts as contiguous), which made the compiled HRM step recompile at batch 1."""
    model = make_model(tiny_hrm_config)
    strides = set()
    for length in (7, 8):
        cache = DynamicCache()
        model(input_ids=torch.ones(1, length - 1, dtype=torch.long), cache=cache)
        inputs = model.prepare_inputs_for_generation(torch.ones(1, length, dtype=torch.long), cache=cache)
        assert inputs["input_ids"].shape == (1, 1)
        strides.add(inputs["input_ids"].stride())
    assert strides == {(1, 1)}


def test_static_cache_steps_match_lm_forward(tiny_hrm_config):
    """Steps over a transformers StaticCache: the mask covers its whole buffer, `cache_columns` say where the
    new positions are written."""
    model = make_model(tiny_hrm_config, halt_max_steps=2)
    ids, mask = padded_prompts([7, 5])
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    full = model.lm_forward(ids, mask)
    width = 12
    cache = StaticCache(config=model.config, max_cache_len=width)
    buffer_mask = torch.nn.functional.pad(mask, (0, width - mask.shape[1]))
    prefix = model.lm_forward(
        ids[:, :4], buffer_mask * (torch.arange(width) < 4), cache=cache, cache_columns=torch.arange(4)
    )
    steps = [
        model.lm_forward(
            ids[:, i : i + 1],
            buffer_mask * (torch.arange(width) <= i),
            position_ids=positions[:, i : i + 1],
            cache=cache,
            cache_columns=torch.tensor([i]),
        )
        for i in range(4, 7)
    ]
    real = mask.bool()
    torch.testing.assert_close(torch.cat([prefix, *steps], 1)[real], full[real], atol=1e-4, rtol=0)


@pytest.mark.slow
def test_compiled_decode_equals_eager(tiny_hrm_config):
    """transformers compiles the HRM's one-token step over its StaticCache (inductor on the CPU) and reuses it.

    Slow: the inductor compilation takes minutes on the shared 2-core machine (the rest is instant).
    """
    model = make_model(tiny_hrm_config, halt_max_steps=2)
    ids, mask = padded_prompts([6, 3])
    eager = generate(model, ids, mask, max_new_tokens=8, use_cache=False, return_logits=True)
    start = time.perf_counter()
    compiled = generate(model, ids, mask, max_new_tokens=8, compile=True, return_logits=True)
    first_call = time.perf_counter() - start
    assert torch.equal(compiled.sequences, eager.sequences)
    assert compiled.logits is not None and eager.logits is not None
    torch.testing.assert_close(compiled.logits, eager.logits, atol=1e-4, rtol=0)
    assert compiled.compile_seconds is not None and 0 < compiled.compile_seconds <= first_call
    again = generate(model, ids, mask, max_new_tokens=8, compile=True)  # reuses the compiled step
    assert again.compile_seconds is None
    assert torch.equal(again.sequences, eager.sequences)
    # Evaluation's batches: one static cache kept across calls, so prompts of other lengths decode with the same
    # shapes: after the first such call, no frame is compiled again.
    cache = StaticCache(config=model.config, max_cache_len=64)
    generate(model, ids, mask, max_new_tokens=8, compile=True, cache=cache)
    frames = dict(torch._dynamo.utils.counters["frames"])
    for lengths in ([9, 2], [1, 4], [12, 12]):
        other_ids, other_mask = padded_prompts(lengths, seed=len(lengths) + lengths[0])
        out = generate(model, other_ids, other_mask, max_new_tokens=8, compile=True, cache=cache)
        reference = generate(model, other_ids, other_mask, max_new_tokens=8, use_cache=False)
        assert torch.equal(out.sequences, reference.sequences)
    assert dict(torch._dynamo.utils.counters["frames"]) == frames, (
        "a batch of other prompt lengths recompiled"
    )
    with pytest.raises(ValueError, match="static"):
        generate(model, ids, mask, compile=True, cache_implementation="dynamic")
