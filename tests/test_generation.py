"""Generation: the KV-cached path is exact, stopping rules, sampling controls and reproducibility."""

import pytest
import torch
from transformers import DynamicCache

from hrm_codegen.generation import GenerationOutput, cut_at_stop, filter_logits, generate
from hrm_codegen.models import HierarchicalReasoningModel_ACTV1

VOCAB_TEXT = [chr(ord("a") + i % 26) if i % 7 else "\n" for i in range(97)]  # a fake decoder's token texts


def decode(ids: list[int]) -> str:
    """Fake detokenizer for the tiny vocabulary: every 7th id is a newline, the rest are letters."""
    return "".join(VOCAB_TEXT[i] for i in ids)


def make_model(config: dict, seed: int = 0, **overrides) -> HierarchicalReasoningModel_ACTV1:
    torch.manual_seed(seed)
    return HierarchicalReasoningModel_ACTV1({**config, **overrides}).eval()


def padded_prompts(lengths: list[int], vocab: int = 97, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded random prompts with the given real lengths (pad id 0)."""
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, length in enumerate(lengths):
        ids[row, width - length :] = torch.randint(1, vocab, (length,), generator=gen)
        mask[row, width - length :] = 1
    return ids, mask


@pytest.mark.parametrize("halt_max_steps", [1, 2])
@pytest.mark.parametrize("lengths", [[6, 6], [9, 4, 1]], ids=["no-padding", "left-padding"])
def test_cached_greedy_equals_full_recompute(tiny_hrm_config, halt_max_steps, lengths):
    model = make_model(tiny_hrm_config, halt_max_steps=halt_max_steps)
    ids, mask = padded_prompts(lengths)
    cached = generate(model, ids, mask, max_new_tokens=12, use_cache=True, return_logits=True)
    full = generate(model, ids, mask, max_new_tokens=12, use_cache=False, return_logits=True)
    assert isinstance(cached, GenerationOutput)
    assert cached.sequences.shape == (len(lengths), ids.shape[1] + 12)
    assert torch.equal(cached.sequences, full.sequences)
    assert cached.logits is not None and full.logits is not None
    assert cached.logits.shape == (len(lengths), 12, tiny_hrm_config["vocab_size"])
    torch.testing.assert_close(cached.logits, full.logits, atol=1e-4, rtol=0)


def assert_cached_equals_full_recompute(model) -> None:
    """Greedy decoding of padded prompts with the cache gives the tokens and logits of full recomputation."""
    ids, mask = padded_prompts([9, 4, 1])
    cached = generate(model, ids, mask, max_new_tokens=12, return_logits=True)
    full = generate(model, ids, mask, max_new_tokens=12, use_cache=False, return_logits=True)
    assert torch.equal(cached.sequences, full.sequences)
    assert cached.logits is not None and full.logits is not None
    torch.testing.assert_close(cached.logits, full.logits, atol=1e-4, rtol=0)


def test_cached_grouped_query_attention_equals_full_recompute(tiny_hrm_config):
    # cached steps read each key-value head for its query heads (SDPA's enable_gqa); the uncached forward repeats them
    model = make_model(tiny_hrm_config, num_key_value_heads=2, L_cycles=2, halt_max_steps=2)
    assert model.config.num_heads == 4  # two query heads per key-value head: their order matters
    assert_cached_equals_full_recompute(model)


def test_cached_equals_full_recompute_with_learned_positions_and_q_head(tiny_hrm_config):
    model = make_model(tiny_hrm_config, pos_encodings="learned", enable_q_head=True, halt_max_steps=2)
    assert_cached_equals_full_recompute(model)


def test_non_causal_model_refuses_the_cache(tiny_hrm_config):
    model = make_model(tiny_hrm_config, causal=False)
    ids, mask = padded_prompts([4, 2])
    with pytest.raises(ValueError, match="causal"):
        generate(model, ids, mask, max_new_tokens=4)
    assert len(generate(model, ids, mask, max_new_tokens=4, use_cache=False).completion_ids[0]) == 4


@pytest.mark.parametrize("halt_max_steps", [1, 2])
def test_cached_sampling_equals_full_recompute(tiny_hrm_config, halt_max_steps):
    model = make_model(tiny_hrm_config, halt_max_steps=halt_max_steps)
    ids, mask = padded_prompts([5, 2])
    kwargs = dict(max_new_tokens=10, do_sample=True, temperature=1.5, num_return_sequences=3, seed=7)
    cached = generate(model, ids, mask, use_cache=True, **kwargs)
    full = generate(model, ids, mask, use_cache=False, **kwargs)
    assert cached.sequences.shape == (6, ids.shape[1] + 10)
    assert torch.equal(cached.sequences, full.sequences)
    assert len({tuple(c) for c in cached.completion_ids}) > 1  # the samples differ


def test_left_padding_does_not_change_a_prompts_continuation(tiny_hrm_config):
    model = make_model(tiny_hrm_config, halt_max_steps=2)
    ids, mask = padded_prompts([8, 3])
    batched = generate(model, ids, mask, max_new_tokens=10)
    alone = generate(model, ids[1:, -3:], max_new_tokens=10)
    assert batched.completion_ids[1] == alone.completion_ids[0]


def test_cache_prefill_logits_match_lm_forward(tiny_hrm_config):
    model = make_model(tiny_hrm_config, halt_max_steps=2)
    ids, mask = padded_prompts([7, 5])
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    full = model.lm_forward(ids, mask)
    cache = DynamicCache()
    prefix = model.lm_forward(ids[:, :4], mask[:, :4], cache=cache)
    steps = [  # transformers' convention: the mask covers the cached and the new positions
        model.lm_forward(
            ids[:, i : i + 1], mask[:, : i + 1], position_ids=positions[:, i : i + 1], cache=cache
        )
        for i in range(4, 7)
    ]
    real = mask.bool()
    stitched = torch.cat([prefix, *steps], 1)
    torch.testing.assert_close(stitched[real], full[real], atol=1e-4, rtol=0)


def test_stops_at_eos_and_trims(tiny_hrm_config):
    model = make_model(tiny_hrm_config, halt_max_steps=2)
    ids, mask = padded_prompts([5, 3, 4])
    free = generate(model, ids, mask, max_new_tokens=12)
    eos = free.completion_ids[0][3]
    first_eos = [c.index(eos) if eos in c else None for c in free.completion_ids]
    out = generate(model, ids, mask, max_new_tokens=12, eos_token_id=eos, pad_token_id=0)
    for row, cut in enumerate(first_eos):
        if cut is None:
            assert out.finish_reasons[row] == "length"
            assert out.completion_ids[row] == free.completion_ids[row]
        else:
            assert out.finish_reasons[row] == "eos"
            assert out.completion_ids[row] == free.completion_ids[row][:cut]
            assert out.sequences[row, ids.shape[1] + cut].item() == eos
            assert (out.sequences[row, ids.shape[1] + cut + 1 :] == 0).all()
    assert out.sequences.shape[1] == ids.shape[1] + max(
        len(c) + (r == "eos") for c, r in zip(out.completion_ids, out.finish_reasons, strict=True)
    )


def test_stops_at_stop_string_and_trims_text(tiny_hrm_config):
    model = make_model(tiny_hrm_config, halt_max_steps=2)
    ids, mask = padded_prompts([6, 4])
    free = generate(model, ids, mask, max_new_tokens=16, tokenizer=decode)
    assert free.texts == [decode(c) for c in free.completion_ids]
    stop = free.texts[1][4:6]
    out = generate(model, ids, mask, max_new_tokens=16, tokenizer=decode, stop_strings=[stop])
    assert out.texts is not None
    for row, text in enumerate(free.texts):
        if stop in text:
            shortest = next(i for i in range(1, 17) if stop in decode(free.completion_ids[row][:i]))
            assert out.finish_reasons[row] == "stop_string"
            assert out.completion_ids[row] == free.completion_ids[row][:shortest]
            assert out.texts[row] == text[: text.index(stop)]
        else:
            assert out.finish_reasons[row] == "length"
            assert out.texts[row] == text
    assert out.finish_reasons[1] == "stop_string"


def test_cut_at_stop_uses_earliest_stop():
    text = "def f():\n    return 1\nprint(f())\nassert f() == 1\n"
    assert cut_at_stop(text, ["\nassert", "\nprint"]) == "def f():\n    return 1"
    assert cut_at_stop(text, ["\nclass"]) == text


def test_stops_at_model_seq_len(tiny_hrm_config):
    model = make_model(tiny_hrm_config, seq_len=16)
    ids, mask = padded_prompts([10, 5])
    out = generate(model, ids, mask, max_new_tokens=50)
    assert [len(c) for c in out.completion_ids] == [6, 11]
    assert out.finish_reasons == ["length", "length"]


def test_input_errors(tiny_hrm_config):
    model = make_model(tiny_hrm_config, seq_len=16)
    ids, mask = padded_prompts([4, 2])
    with pytest.raises(ValueError, match="left-padded"):
        generate(model, ids, mask.flip(1))
    with pytest.raises(ValueError, match="no room"):
        generate(model, torch.ones(1, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="tokenizer"):
        generate(model, ids, mask, stop_strings=["\n"])
    with pytest.raises(ValueError, match="temperature"):
        generate(model, ids, mask, do_sample=True, temperature=0.0)


def test_filter_logits_top_k_top_p_temperature():
    logits = torch.tensor([[2.0, 0.0, 3.0, 1.0]])
    top2 = filter_logits(logits, top_k=2)
    assert torch.isfinite(top2).tolist() == [[True, False, True, False]]
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    nucleus = filter_logits(probs.log(), top_p=0.75)
    assert torch.isfinite(nucleus).tolist() == [[False, True, False, True]]
    assert torch.isfinite(filter_logits(probs.log(), top_p=1e-6)).sum().item() == 1
    torch.testing.assert_close(filter_logits(logits, temperature=0.5), logits * 2)
    torch.testing.assert_close(
        filter_logits(probs.log(), top_p=0.75).softmax(-1), torch.tensor([[0, 0.625, 0, 0.375]])
    )


@pytest.mark.parametrize("controls", [{"top_k": 1}, {"top_p": 1e-6}], ids=["top_k=1", "top_p=tiny"])
def test_degenerate_sampling_equals_greedy(tiny_hrm_config, controls):
    model = make_model(tiny_hrm_config, halt_max_steps=2)
    ids, mask = padded_prompts([5, 3])
    greedy = generate(model, ids, mask, max_new_tokens=10)
    sampled = generate(
        model, ids, mask, max_new_tokens=10, do_sample=True, temperature=2.0, seed=3, **controls
    )
    assert torch.equal(sampled.sequences, greedy.sequences)


def test_top_k_sampling_draws_only_from_top_k(tiny_hrm_config):
    model = make_model(tiny_hrm_config, halt_max_steps=2)
    ids, mask = padded_prompts([5, 3])
    out = generate(
        model,
        ids,
        mask,
        max_new_tokens=12,
        do_sample=True,
        temperature=5.0,
        top_k=3,
        seed=0,
        return_logits=True,
    )
    assert out.logits is not None
    allowed = out.logits.topk(3, dim=-1).indices
    drawn = out.sequences[:, ids.shape[1] :]
    assert (allowed == drawn[..., None]).any(-1).all()
    assert len(set(drawn.flatten().tolist())) > 3  # high temperature really samples


def test_sampling_is_reproducible_with_a_seed(tiny_hrm_config):
    model = make_model(tiny_hrm_config)
    ids, mask = padded_prompts([4, 6])
    kwargs = dict(max_new_tokens=16, do_sample=True, temperature=2.0, top_p=0.95, num_return_sequences=2)
    first = generate(model, ids, mask, seed=11, **kwargs)
    again = generate(model, ids, mask, seed=11, **kwargs)
    other = generate(model, ids, mask, seed=12, **kwargs)
    assert torch.equal(first.sequences, again.sequences)
    assert not torch.equal(first.sequences, other.sequences)


def test_num_return_sequences_expands_prompts(tiny_hrm_config):
    model = make_model(tiny_hrm_config)
    ids, mask = padded_prompts([4, 6])
    single = generate(model, ids, mask, max_new_tokens=8)
    out = generate(model, ids, mask, max_new_tokens=8, num_return_sequences=3)
    assert out.sequences.shape[0] == 6
    assert torch.equal(out.sequences[:, : ids.shape[1]], ids.repeat_interleave(3, 0))
    assert out.completion_ids == [c for c in single.completion_ids for _ in range(3)]


def test_per_sequence_seeds_make_samples_independent_of_the_batch(tiny_hrm_config):
    model = make_model(tiny_hrm_config)
    ids, mask = padded_prompts([7, 3])
    kwargs = dict(max_new_tokens=12, do_sample=True, temperature=2.0)
    batched = generate(model, ids, mask, seed=[21, 22], **kwargs)
    alone = generate(model, ids[1:, -3:], seed=[22], **kwargs)
    assert batched.completion_ids[1] == alone.completion_ids[0]
    swapped = generate(model, ids, mask, seed=[22, 21], **kwargs)
    assert swapped.completion_ids[1] != batched.completion_ids[1]
    with pytest.raises(ValueError, match="seeds"):
        generate(model, ids, mask, seed=[1, 2, 3], **kwargs)


def test_compile_option_maps_to_static_cache_and_compile_config():
    from hrm_codegen.generation import compile_options

    on = compile_options(True, torch.device("cpu"))
    assert on["cache_implementation"] == "static" and on["compile_config"]._compile_all_devices
    assert on["compile_config"].mode == "default"
    assert compile_options(False, torch.device("cpu")) == {"disable_compile": True}


@pytest.mark.parametrize("halt_max_steps", [1, 2])
def test_beam_search_with_the_cache_equals_without(tiny_hrm_config, halt_max_steps):
    model = make_model(tiny_hrm_config, halt_max_steps=halt_max_steps)
    ids, mask = padded_prompts([7, 3])
    cached = generate(model, ids, mask, max_new_tokens=8, num_beams=3, num_return_sequences=2)
    full = generate(model, ids, mask, max_new_tokens=8, num_beams=3, num_return_sequences=2, use_cache=False)
    assert cached.sequences.shape[0] == 4
    assert torch.equal(cached.sequences, full.sequences)
