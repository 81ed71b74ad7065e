"""Per-sequence seeds for every family: a sampled completion depends on its own seed, never on its batch."""

from __future__ import annotations

import pytest
import torch

from hrm_codegen.families import get_family
from hrm_codegen.families.base import GenerationRequest

VOCAB = 97


def _model(family: str, tiny_hrm_config: dict) -> torch.nn.Module:
    config = {**tiny_hrm_config, "H_cycles": 1, "L_cycles": 2}
    if family == "transformer":
        config = {**config, "match": "params", "initializer_range": 0.5, "pad_token_id": 0}
    torch.manual_seed(0)
    return get_family(family).build(config).eval()


def _left_pad(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


@pytest.mark.parametrize("family", ["hrm", "transformer"])
def test_a_sample_is_the_same_alone_and_inside_a_batch_of_eight_prompts(family, tiny_hrm_config):
    model = _model(family, tiny_hrm_config)
    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randint(1, VOCAB, (int(n),), generator=generator).tolist() for n in range(3, 11)]
    seeds = tuple(range(100, 108))
    request = GenerationRequest(
        max_new_tokens=12, do_sample=True, temperature=1.0, top_p=0.95, eos_token_id=None
    )

    def sample(rows: list[list[int]], row_seeds: tuple[int, ...]) -> list[list[int]]:
        ids, mask = _left_pad(rows)
        r = GenerationRequest(**{**request.__dict__, "seeds": row_seeds})
        return get_family(family).generate(model, ids, mask, r).completion_ids

    batch = sample(prompts, seeds)
    for i in (0, 5):
        assert sample([prompts[i]], (seeds[i],)) == [batch[i]], i
    # the seed decides: another seed for the same prompt gives another completion
    assert sample([prompts[5]], (seeds[5] + 1,)) != [batch[5]]
    # and the draw does not depend on the row's position in the batch
    swapped = sample([prompts[5], prompts[0]], (seeds[5], seeds[0]))
    assert swapped == [batch[5], batch[0]]
