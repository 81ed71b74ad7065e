"""KV caches with explicit slots: static == dynamic == full recomputation; slot order is checked; compiled decode."""

import time

import pytest
import torch
from test_generation import (  # the same tiny models and prompts as the reference tests
    make_model,
    padded_prompts,
)

from hrm_codegen.generation import generate
from hrm_codegen.models.layers import KVCache, StaticKVCache


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


def test_static_cache_rows_that_finish_early_keep_their_completions(tiny_hrm_config):
    """The static cache keeps finished rows stepping on pad tokens; the other rows must not notice."""
    model = make_model(tiny_hrm_config, seq_len=20, halt_max_steps=2)
    ids, mask = padded_prompts([12, 3])  # row 0 runs out of positions after 8 tokens, row 1 goes on
    static = generate(model, ids, mask, max_new_tokens=14, cache_implementation="static")
    full = generate(model, ids, mask, max_new_tokens=14, use_cache=False)
    assert static.completion_ids == full.completion_ids
    assert [len(c) for c in static.completion_ids] == [8, 14]


def _prefill(model, cache, ids, mask):
    return model.lm_forward(ids, mask, kv_cache=cache, logits_to_keep=1)


@pytest.mark.parametrize("cache_class", [KVCache, lambda: StaticKVCache(16)], ids=["dynamic", "static"])
def test_a_step_with_another_slot_order_raises(tiny_hrm_config, cache_class):
    model = make_model(tiny_hrm_config, halt_max_steps=1)
    ids, mask = padded_prompts([5, 3])
    cache = cache_class()
    _prefill(model, cache, ids, mask)
    assert cache.order[0] == (0, 0, 0, "L", 0) and cache.order[2] == (0, 0, None, "H", 0)
    one = torch.ones(2, 1, dtype=torch.long)
    # A step that runs two segments calls keys the prefill never allocated.
    with pytest.raises(RuntimeError, match="made no such call"):
        model.lm_forward(one, one, position_ids=one * 5, kv_cache=cache, num_segments=2)
    # Layers called in another order than at prefill.
    cache = cache_class()
    _prefill(model, cache, ids, mask)
    k = torch.zeros(2, 1, 4, 8)
    cache.begin_step(one.bool())
    with pytest.raises(RuntimeError, match=r"has key \(0, 0, None, 'H', 0\)"):
        cache.update((0, 0, None, "H", 0), k, k)


def test_a_step_that_skips_calls_raises(tiny_hrm_config):
    model = make_model(tiny_hrm_config, halt_max_steps=2)
    ids, mask = padded_prompts([5, 3])
    cache = KVCache()
    _prefill(model, cache, ids, mask)
    one = torch.ones(2, 1, dtype=torch.long)
    model.lm_forward(one, one, position_ids=one * 5, kv_cache=cache, num_segments=1)  # half the calls
    with pytest.raises(RuntimeError, match="previous step made"):
        cache.begin_step(one.bool())


def test_static_cache_steps_match_lm_forward(tiny_hrm_config):
    model = make_model(tiny_hrm_config, halt_max_steps=2)
    ids, mask = padded_prompts([7, 5])
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    full = model.lm_forward(ids, mask)
    cache = StaticKVCache(12)
    prefix = model.lm_forward(ids[:, :4], mask[:, :4], kv_cache=cache)
    steps = [
        model.lm_forward(
            ids[:, i : i + 1], mask[:, i : i + 1], position_ids=positions[:, i : i + 1], kv_cache=cache
        )
        for i in range(4, 7)
    ]
    real = mask.bool()
    torch.testing.assert_close(torch.cat([prefix, *steps], 1)[real], full[real], atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="holds 12 positions"):
        model.lm_forward(ids, mask, kv_cache=cache)


@pytest.mark.slow
def test_compiled_decode_equals_eager(tiny_hrm_config):
    """One torch.compile of the one-token step (inductor on the CPU), reused by a second call.

    Slow: the inductor compilation took about 110 s on the shared 2-core machine (the rest is instant).
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
    with pytest.raises(ValueError, match="static"):
        generate(model, ids, mask, compile=True, cache_implementation="dynamic")
