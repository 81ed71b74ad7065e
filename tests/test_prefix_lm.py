"""PrefixLM (`arch.prefix_lm`): the prompt (token_type_ids == 1) is bidirectional, the completion causal."""

import pytest
import torch

from hrm_codegen.datasets.batching import PackedDataset, collate_batch, encode_prompt, pack_examples
from hrm_codegen.datasets.mbpp import MBPPDataset, build_prompt, load_mbpp, split_tasks
from hrm_codegen.families import get_family
from hrm_codegen.families.base import GenerationRequest
from hrm_codegen.generation import generate
from hrm_codegen.models import HierarchicalReasoningModel_ACTV1, HRMConfig
from hrm_codegen.tokenization import load_tokenizer

PROMPT = 7  # prompt tokens (BOS included) of the 12-token examples below


def make_model(cfg: dict, **overrides) -> HierarchicalReasoningModel_ACTV1:
    torch.manual_seed(0)
    return HierarchicalReasoningModel_ACTV1({**cfg, **overrides}).eval()


def example(length: int = 12, prompt: int = PROMPT, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids [1, length] and their token_type_ids (1 on the first `prompt` tokens)."""
    ids = torch.randint(1, 97, (1, length), generator=torch.Generator().manual_seed(seed))
    types = torch.zeros_like(ids)
    types[:, :prompt] = 1
    return ids, types


@pytest.mark.parametrize("padded", [False, True])
def test_prompt_tokens_see_the_whole_prompt(tiny_hrm_config, padded):
    model = make_model(tiny_hrm_config, prefix_lm=True, halt_max_steps=2)
    ids, types = example()
    mask = torch.ones_like(ids)
    if padded:  # right padding, as collate_batch pads training batches
        ids, types = (
            torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], 1),
            torch.cat([types, torch.zeros(1, 3)], 1),
        )
        mask = torch.cat([mask, torch.zeros(1, 3, dtype=torch.long)], 1)
    j = 5  # a prompt token
    changed = ids.clone()
    changed[0, j] = (ids[0, j] + 1) % 97
    with torch.no_grad():
        a = model.lm_forward(ids, mask, types.long())
        b = model.lm_forward(changed, mask, types.long())
    assert not torch.allclose(a[:, :j], b[:, :j])  # earlier prompt positions see the later prompt token
    assert torch.isfinite(a).all()


def test_completion_tokens_stay_causal_bitwise(tiny_hrm_config):
    model = make_model(tiny_hrm_config, prefix_lm=True, halt_max_steps=2)
    ids, types = example()
    for j in (PROMPT, 9, 11):  # completion tokens
        changed = ids.clone()
        changed[0, j] = (ids[0, j] + 1) % 97
        with torch.no_grad():
            a = model.lm_forward(ids, token_type_ids=types)
            b = model.lm_forward(changed, token_type_ids=types)
        assert torch.equal(a[:, :j], b[:, :j])
        assert not torch.allclose(a[:, j:], b[:, j:])


def test_without_prefix_lm_token_type_ids_are_ignored_bitwise(tiny_hrm_config):
    plain = make_model(tiny_hrm_config)
    assert plain.config.prefix_lm is False and HRMConfig().prefix_lm is False
    ids, types = example()
    with torch.no_grad():
        reference = plain.lm_forward(ids)
        assert torch.equal(plain.lm_forward(ids, token_type_ids=types), reference)
        batch = {"input_ids": ids, "token_type_ids": types}
        _, outputs = plain(plain.initial_carry(batch), batch)
        assert torch.equal(outputs["logits"], reference)
        # prefix_lm with no prompt token (corpus data: all 0) is plain causal attention, bit for bit.
        prefix = make_model(tiny_hrm_config, prefix_lm=True)
        assert torch.equal(prefix.lm_forward(ids, token_type_ids=torch.zeros_like(ids)), reference)
        assert not torch.equal(prefix.lm_forward(ids, token_type_ids=types), reference)


def test_the_act_batch_dict_takes_token_type_ids(tiny_hrm_config):
    model = make_model(tiny_hrm_config, prefix_lm=True)
    ids, types = example()
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": types}
    with torch.no_grad():
        carry, outputs = model(model.initial_carry(batch), batch)
        expected = model.lm_forward(ids, token_type_ids=types)
    assert "token_type_ids" in carry.current_data
    assert torch.equal(outputs["logits"], expected)


@pytest.mark.parametrize("num_return_sequences", [1, 2])
def test_cached_decoding_with_a_prefix_equals_full_recomputation(tiny_hrm_config, num_return_sequences):
    model = make_model(tiny_hrm_config, prefix_lm=True, halt_max_steps=2)
    torch.manual_seed(3)
    ids = torch.randint(1, 97, (3, 9))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding
    mask[2, :2] = 0
    kwargs = {"max_new_tokens": 10, "num_return_sequences": num_return_sequences, "return_logits": True}
    if num_return_sequences > 1:
        kwargs |= {"do_sample": True, "seed": list(range(3 * num_return_sequences))}
    cached = generate(model, ids, mask, prefix_mask=mask.bool(), **kwargs)
    full = generate(model, ids, mask, prefix_mask=mask.bool(), use_cache=False, **kwargs)
    assert cached.completion_ids == full.completion_ids
    assert cached.logits is not None and full.logits is not None
    torch.testing.assert_close(cached.logits, full.logits, atol=1e-4, rtol=1e-4)
    causal = generate(model, ids, mask, **kwargs)  # the same weights without the prefix decode otherwise
    assert causal.logits is not None and not torch.allclose(causal.logits, cached.logits)


def test_the_family_decodes_with_every_real_prompt_token_as_prefix(tiny_hrm_config):
    model = make_model(tiny_hrm_config, prefix_lm=True)
    ids = torch.randint(1, 97, (2, 8), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    out = get_family("hrm").generate(model, ids, mask, GenerationRequest(max_new_tokens=6))
    reference = generate(model, ids, mask, prefix_mask=mask.bool(), max_new_tokens=6, use_cache=False)
    assert out.completion_ids == reference.completion_ids


def test_packed_prefix_examples_never_see_each_other(tiny_hrm_config):
    model = make_model(tiny_hrm_config, prefix_lm=True)
    items = []
    for seed, (length, prompt) in enumerate([(9, 4), (12, 7), (6, 6)]):
        ids, types = example(length, prompt, seed=seed + 10)
        items.append({"input_ids": ids[0], "labels": ids[0], "token_type_ids": types[0]})
    (block,) = pack_examples(items, seq_len=32, pad_id=0)
    assert block["token_type_ids"].tolist() == [1] * 4 + [0] * 5 + [1] * 7 + [0] * 5 + [1] * 6 + [0] * 5
    batch = {k: v[None] for k, v in block.items() if k != "labels"}
    with torch.no_grad():
        _, outputs = model(model.initial_carry(batch), batch)
        start = 0
        for item in items:
            end = start + len(item["input_ids"])
            alone = model.lm_forward(item["input_ids"][None], token_type_ids=item["token_type_ids"][None])
            torch.testing.assert_close(outputs["logits"][:, start:end], alone, atol=1e-5, rtol=1e-5)
            start = end


def test_collate_pads_token_type_ids_with_zero_and_corpus_items_have_none():
    a = {
        "input_ids": torch.tensor([5, 6, 7]),
        "labels": torch.tensor([6, 7, -100]),
        "token_type_ids": torch.tensor([1, 1, 0]),
    }
    b = {"input_ids": torch.tensor([5, 6]), "labels": torch.tensor([6, -100])}
    batch = collate_batch([a, b], pad_id=0, pad_to=5)
    assert batch["token_type_ids"].tolist() == [[1, 1, 0, 0, 0], [0, 0, 0, 0, 0]]
    assert "token_type_ids" not in collate_batch([b, b], pad_id=0)  # corpus blocks: plain causal


def test_flash_attn_backend_is_refused_with_prefix_lm(tiny_hrm_config):
    with pytest.raises(ValueError, match="prefix_lm"):
        HRMConfig.from_arch({**tiny_hrm_config, "prefix_lm": True, "attn_backend": "flash_attn"})


def test_mbpp_batches_mark_the_prompt_tokens(gpt2_dir, mbpp_path):
    tok = load_tokenizer(gpt2_dir)
    rows = load_mbpp(mbpp_path)
    dataset = MBPPDataset(rows, "prompt", tok, seq_len=1024)
    tasks = {task["task_id"]: task for task in split_tasks(rows, "prompt")}
    items = [dataset[i] for i in range(len(dataset))]
    for i, item in enumerate(items):
        prompt_ids = encode_prompt(tok, build_prompt(tasks[dataset.task_ids[i]]))
        length = dataset.prompt_lengths[i]
        assert length == len(prompt_ids) and item["input_ids"][:length].tolist() == prompt_ids
        assert item["token_type_ids"].tolist() == [1] * length + [0] * (len(item["input_ids"]) - length)
        assert bool((item["labels"][: length - 1] == -100).all()) and int(item["labels"][length - 1]) != -100
    batch = collate_batch(items[:4], tok.pad_id)
    assert batch["token_type_ids"].sum(1).tolist() == dataset.prompt_lengths[:4]
    assert not bool((batch["token_type_ids"].bool() & ~batch["attention_mask"].bool()).any())
    packed = PackedDataset(dataset, seq_len=1024, pad_id=tok.pad_id)
    assert sum(int(block["token_type_ids"].sum()) for block in packed.blocks) == sum(dataset.prompt_lengths)
