"""General batching for every data source: `[BOS] prompt target [EOS]` encoding, shifted labels, collate,
packing into seq_len blocks, and the deterministic data order. MBPP, pairs, HumanEval and the corpus use it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

if TYPE_CHECKING:
    from hrm_codegen.tokenization import CodeTokenizer


def encode_prompt(tokenizer: CodeTokenizer, prompt: str) -> list[int]:
    """Token ids `[BOS] prompt`: what a model is given at generation time."""
    return [tokenizer.bos_id, *tokenizer.encode(prompt)]


def encode_example(
    tokenizer: CodeTokenizer, prompt: str, target: str, own_special_tokens: bool = False
) -> tuple[list[int], int]:
    """Token ids `[BOS] prompt target [EOS]` and the prompt length (BOS included).

    Prompt and target are encoded separately, as at generation time, where the prompt is encoded alone.
    `own_special_tokens`: the prompt gets the tokenizer's own special tokens instead of training's BOS (a chat
    prompt, rendered by the chat template, brings its own), as evaluation's chat format encodes it.
    """
    prompt_ids = tokenizer.hf(prompt)["input_ids"] if own_special_tokens else encode_prompt(tokenizer, prompt)
    return [*prompt_ids, *tokenizer.encode(target), tokenizer.eos_id], len(prompt_ids)


def shifted_labels(input_ids: Sequence[int], prompt_length: int) -> list[int]:
    """Next-token labels: labels[i] = input_ids[i+1] when that token is target or EOS, else -100."""
    return [-100] * (prompt_length - 1) + list(input_ids[prompt_length:]) + [-100]


def prompt_token_types(length: int, prompt_length: int) -> list[int]:
    """`token_type_ids` of an example: 1 on the prompt (BOS included), 0 on the target and EOS (PrefixLM)."""
    return [1] * prompt_length + [0] * (length - prompt_length)


class EncodedDataset(Dataset):
    """Encoded prompt/target examples; item i is `{input_ids, labels, token_type_ids}` (1-D LongTensors,
    equal length).

    The dataset does the shifting: `labels[i] == input_ids[i+1]` on target and EOS positions and -100
    elsewhere (every prompt target and the last position), so the loss compares logits[i] with labels[i].
    `token_type_ids` is 1 on the prompt tokens (BOS and the prompt) and 0 elsewhere, as PrefixLM models
    (`arch.prefix_lm`, transformers' HrmText) expect; a model without PrefixLM ignores it.
    """

    def __init__(self, input_ids: list[list[int]], prompt_lengths: list[int], num_dropped: int = 0) -> None:
        self.input_ids = input_ids
        self.prompt_lengths = prompt_lengths
        self.num_dropped = num_dropped

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ids = self.input_ids[index]
        prompt_length = self.prompt_lengths[index]
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.tensor(shifted_labels(ids, prompt_length), dtype=torch.long),
            "token_type_ids": torch.tensor(prompt_token_types(len(ids), prompt_length), dtype=torch.long),
        }


def encode_pairs(
    tokenizer: CodeTokenizer,
    pairs: Sequence[tuple[str, str]],
    seq_len: int,
    desc: str = "encoding",
    own_special_tokens: bool = False,
) -> dict[str, list]:
    """Encode (prompt, target) pairs (`encode_example`), dropping (never cutting) those longer than `seq_len`.

    Returns plain lists: `input_ids`, `prompt_lengths`, `kept` and `dropped` (indices into `pairs`).
    """
    encoded: dict[str, list] = {"input_ids": [], "prompt_lengths": [], "kept": [], "dropped": []}
    for index, (prompt, target) in enumerate(tqdm(pairs, desc=desc, leave=False)):
        ids, prompt_length = encode_example(tokenizer, prompt, target, own_special_tokens)
        if len(ids) > seq_len:
            encoded["dropped"].append(index)
            continue
        encoded["input_ids"].append(ids)
        encoded["prompt_lengths"].append(prompt_length)
        encoded["kept"].append(index)
    return encoded


_PAD_VALUES = {"labels": -100, "attention_mask": 0, "position_ids": 0, "segment_ids": -1, "token_type_ids": 0}
_OPTIONAL_KEYS = ("position_ids", "segment_ids", "token_type_ids")


def collate_batch(items: Sequence[dict], pad_id: int, pad_to: int | None = None) -> dict[str, torch.Tensor]:
    """Right-pad items into LongTensors `input_ids`, `attention_mask`, `labels` (-100 on padding).

    `position_ids`, `segment_ids` (from pack_examples) and `token_type_ids` (prompt tokens) are padded
    too when the items carry them (`token_type_ids` with 0, also for an item without it).
    """
    length = max(len(item["input_ids"]) for item in items)
    if pad_to is not None:
        if pad_to < length:
            raise ValueError(f"pad_to={pad_to} is shorter than the longest item ({length} tokens)")
        length = pad_to
    keys = ["input_ids", "attention_mask", "labels"]
    keys += [
        key
        for key in _OPTIONAL_KEYS
        if key in items[0] or (key == "token_type_ids" and any(key in item for item in items))
    ]
    batch = {
        key: torch.full(
            (len(items), length), pad_id if key == "input_ids" else _PAD_VALUES[key], dtype=torch.long
        )
        for key in keys
    }
    for row, item in enumerate(items):
        size = len(item["input_ids"])
        for key in keys:
            if key == "attention_mask":
                value = item.get(key, torch.ones(size, dtype=torch.long))
            elif key == "token_type_ids":
                value = item.get(key, torch.zeros(size, dtype=torch.long))
            else:
                value = item[key]
            batch[key][row, :size] = torch.as_tensor(value, dtype=torch.long)
    return batch


def _pack_block(items: Sequence[dict], seq_len: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Concatenate items into one block of `seq_len` tokens with per-example positions and segments."""
    block = {
        "input_ids": torch.full((seq_len,), pad_id, dtype=torch.long),
        **{key: torch.full((seq_len,), value, dtype=torch.long) for key, value in _PAD_VALUES.items()},
    }
    start = 0
    for segment, item in enumerate(items):
        size = len(item["input_ids"])
        end = start + size
        block["input_ids"][start:end] = torch.as_tensor(item["input_ids"], dtype=torch.long)
        block["labels"][start:end] = torch.as_tensor(item["labels"], dtype=torch.long)
        if "token_type_ids" in item:
            block["token_type_ids"][start:end] = torch.as_tensor(item["token_type_ids"], dtype=torch.long)
        block["attention_mask"][start:end] = 1
        block["position_ids"][start:end] = torch.arange(size)
        block["segment_ids"][start:end] = segment
        start = end
    return block


def pack_examples(items: Iterable[dict], seq_len: int, pad_id: int) -> list[dict[str, torch.Tensor]]:
    """Pack items in order into `seq_len` blocks (a new block when the next item does not fit).

    Each block has `input_ids`, `labels`, `attention_mask`, `position_ids` (restarting at 0 per example),
    `segment_ids` (example index within the block, -1 on padding) and `token_type_ids` (the items' prompt
    tokens, 0 where an item has none). An example's last label is -100,
    so no example predicts the next one's BOS.
    """
    blocks: list[dict[str, torch.Tensor]] = []
    current: list[dict] = []
    used = 0
    for item in items:
        size = len(item["input_ids"])
        if size > seq_len:
            raise ValueError(f"an example of {size} tokens does not fit in seq_len={seq_len}")
        if used + size > seq_len:
            blocks.append(_pack_block(current, seq_len, pad_id))
            current, used = [], 0
        current.append(item)
        used += size
    if current:
        blocks.append(_pack_block(current, seq_len, pad_id))
    return blocks


class PackedDataset(Dataset):
    """A training dataset's examples packed in order into `seq_len` blocks (`pack_examples`); item i is block i.

    Every block holds `input_ids`, `labels`, `attention_mask`, `position_ids`, `segment_ids`, which the HRM
    uses to keep the examples of a block apart, and `token_type_ids` (prompt tokens, for PrefixLM). The packing is fixed (dataset order, next fit), so the data
    order can shuffle blocks by step count alone.
    """

    def __init__(self, examples: Dataset, seq_len: int, pad_id: int) -> None:
        self.num_examples = len(examples)  # type: ignore[arg-type]
        self.blocks = pack_examples((examples[i] for i in range(self.num_examples)), seq_len, pad_id)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.blocks[index]


class BatchOrder:
    """Deterministic data order: epoch e is a permutation seeded by (seed, e), cut into global batches (drop_last).

    The position in the data is the step count alone, so resuming needs no sampler state.
    """

    def __init__(
        self, num_examples: int, global_batch_size: int, seed: int, unit: str = "training examples"
    ) -> None:
        self.num_examples = num_examples
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.steps_per_epoch = num_examples // global_batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"train.global_batch_size={global_batch_size} is larger than the {num_examples} {unit}"
            )
        self._epoch = -1
        self._perm = torch.empty(0, dtype=torch.long)

    def state(self) -> dict[str, int]:
        """What must match for a resume to continue the same order."""
        return {
            "num_examples": self.num_examples,
            "global_batch_size": self.global_batch_size,
            "seed": self.seed,
        }

    def global_batch(self, step: int) -> list[int]:
        """Example indices of global batch number `step` (0-based)."""
        epoch, index = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(self.num_examples, generator=generator)
            self._epoch = epoch
        start = index * self.global_batch_size
        return self._perm[start : start + self.global_batch_size].tolist()
