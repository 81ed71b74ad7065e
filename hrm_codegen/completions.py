"""Completion sources for the evaluator: sample completions of problem prompts from an HRM or a transformers LM."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn
from tqdm.auto import tqdm

from hrm_codegen.datasets.batching import encode_prompt
from hrm_codegen.datasets.problems import Problem
from hrm_codegen.datasets.protocols import BOS_ALWAYS, BOS_TOKENIZER
from hrm_codegen.families import Generated, GenerationRequest, ModelFamily
from hrm_codegen.families.transformers_lm import PRETRAINED
from hrm_codegen.generation import cut_at_stop
from hrm_codegen.tokenization import CodeTokenizer

if TYPE_CHECKING:
    from hrm_codegen.inference import LoadedModel


@dataclass(frozen=True)
class SamplingConfig:
    """How completions are drawn: greedy when temperature is 0; `batch_size` sequences per generate call."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    batch_size: int = 8
    stop_strings: tuple[str, ...] = ()
    batch_tokens: int | None = (
        None  # prompt tokens per generate call, padding included (None: batch_size x 256)
    )

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.batch_tokens is not None and self.batch_tokens < 1:
            raise ValueError(f"batch_tokens must be >= 1, got {self.batch_tokens}")

    @property
    def do_sample(self) -> bool:
        """True unless decoding is greedy."""
        return self.temperature > 0


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one, else the CPU count)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


def default_batch_size(device: str, num_samples: int = 1) -> int:
    """Sequences per generate call when none is given: 32 on a GPU; on a CPU 8 (on the 2-core machine here, with
    finished rows leaving the batch and prompts bucketed by length, the retrofitted HRM decodes MBPP as fast at
    8 as at 16 and 30% slower at 32: docs/benchmarks.md); at least one problem's samples."""
    size = 32 if str(device).startswith("cuda") else 8
    return max(size, num_samples)


def sample_seed(seed: int, task_id: str, index: int) -> int:
    """A stable 63-bit seed for one (task, sample index), so a sample does not depend on batching or resume."""
    digest = hashlib.sha256(f"{seed}:{task_id}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class ModelCompletions:
    """A completion source (`hrm_codegen.evaluation.CompletionSource`) that samples from a loaded model.

    Decoding goes through the model's family (`family.generate`: prompts in, token ids and finish reasons
    out), with one seed per sample from `sample_seed` where the family supports it, so results do not depend
    on batching or resume. `bos` is the prompt format's BOS rule (`protocols.BOS_ALWAYS`: `[BOS] prompt` as in
    training; `protocols.BOS_TOKENIZER`: the tokenizer's own special tokens); None: training's for a
    `CodeTokenizer`, the tokenizer's own for a plain Hugging Face one. Stop strings are matched in the generated
    text only.
    `last_records` holds, per completion of the last call, the generated token count and finish reason.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        sampling: SamplingConfig,
        progress: bool = True,
        family: ModelFamily | None = None,
        options: Mapping[str, Any] | None = None,
        bos: str | None = None,
    ):
        if bos not in (None, BOS_ALWAYS, BOS_TOKENIZER):
            raise ValueError(f"bos must be {BOS_ALWAYS!r} or {BOS_TOKENIZER!r}, got {bos!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.sampling = sampling
        self.progress = progress
        self.family = family if family is not None else PRETRAINED
        self.device = next(model.parameters()).device
        hf: Any = tokenizer.hf if isinstance(tokenizer, CodeTokenizer) else tokenizer
        if hf.pad_token_id is None:
            hf.pad_token = hf.eos_token
        self.pad_id = cast(int, hf.pad_token_id)
        self.eos_id: int | None = hf.eos_token_id
        self.hf = hf
        self.bos = bos or (BOS_ALWAYS if isinstance(tokenizer, CodeTokenizer) else BOS_TOKENIZER)
        self.last_records: list[list[dict[str, Any]]] = []
        self.options = dict(options or {})  # family-specific GenerationRequest options (cache, compile)
        self.compile_seconds: float | None = None  # the first compiled call's time, compile included
        self._lengths: dict[str, int] = {}
        self._cache: Any = None  # compiled decoding's static cache (see _static_cache)
        self._cache_len = 0

    @classmethod
    def from_loaded(
        cls,
        loaded: LoadedModel,
        sampling: SamplingConfig,
        progress: bool = True,
        options: Mapping[str, Any] | None = None,
        bos: str | None = None,
    ) -> ModelCompletions:
        """The completion source of a `hrm_codegen.inference.LoadedModel`."""
        return cls(loaded.model, loaded.tokenizer, sampling, progress, loaded.family, options, bos)

    @property
    def max_length(self) -> int | None:
        """Positions the model can take (prompt plus completion), when the model has a limit."""
        return self.family.max_length(self.model)

    def _prompt_ids(self, prompt: str) -> list[int]:
        """Prompt ids by the BOS rule: `[BOS] prompt` as in training (EOS when the tokenizer has no BOS, as
        `CodeTokenizer` does), or the tokenizer's own encoding with its special tokens."""
        if self.bos == BOS_TOKENIZER:
            return self.hf(prompt)["input_ids"]
        if isinstance(self.tokenizer, CodeTokenizer):
            return encode_prompt(self.tokenizer, prompt)
        bos = self.hf.bos_token_id if self.hf.bos_token_id is not None else self.hf.eos_token_id
        return [bos, *self.hf.encode(prompt, add_special_tokens=False)]

    @property
    def prompt_room(self) -> int | None:
        """Most prompt tokens that still leave room to generate, when the model has a length limit."""
        limit = self.max_length
        return None if limit is None else limit - min(self.sampling.max_new_tokens, limit // 2)

    def _special_prefix(self, ids: list[int]) -> int:
        """How many leading ids are special tokens the tokenizer added (BOS and the like), kept when truncating."""
        hf: Any = self.tokenizer.hf if isinstance(self.tokenizer, CodeTokenizer) else self.tokenizer
        special = set(getattr(hf, "all_special_ids", []) or [])
        count = 0
        while count < len(ids) and ids[count] in special:
            count += 1
        return count

    def encode(self, prompt: str) -> list[int]:
        """Prompt ids, made to fit: a prompt longer than `prompt_room` keeps its leading special tokens (a BOS,
        when the tokenizer adds one) and its end, the part next to where the code starts."""
        ids, room = self._prompt_ids(prompt), self.prompt_room
        if room is None or len(ids) <= room:
            return ids
        keep = min(self._special_prefix(ids), room - 1)
        return [*ids[:keep], *ids[len(ids) - (room - keep) :]]

    def truncated_prompts(self, problems: Sequence[Problem]) -> list[str]:
        """Task ids whose prompts `encode` shortens to fit the model."""
        room = self.prompt_room
        if room is None:
            return []
        return [p.task_id for p in problems if len(self._prompt_ids(p.prompt)) > room]

    def prompt_length(self, problem: Problem) -> int:
        """Tokens of the problem's prompt as decoded (the evaluator batches problems of similar lengths)."""
        key = problem.prompt
        if key not in self._lengths:
            self._lengths[key] = len(self.encode(key))
        return self._lengths[key]

    def decode(self, ids: list[int]) -> str:
        """Text of generated ids, without special tokens."""
        if isinstance(self.tokenizer, CodeTokenizer):
            return self.tokenizer.decode(ids)
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def __call__(self, problems: list[Problem], indices: list[list[int]]) -> list[list[str]]:
        """One completion per requested sample index of each problem (records in `last_records`)."""
        encoded = [self.encode(p.prompt) for p in problems]
        rows = [(pos, j) for pos, wanted in enumerate(indices) for j in range(len(wanted))]
        rows.sort(key=lambda row: len(encoded[row[0]]))  # similar lengths share a batch: less padding
        completions = [[""] * len(wanted) for wanted in indices]
        self.last_records = [[{} for _ in wanted] for wanted in indices]
        chunks = self._chunks([len(encoded[pos]) for pos, _ in rows], rows)
        for chunk in tqdm(chunks, desc="generate", unit="batch", leave=False, disable=not self.progress):
            prompts = [encoded[pos] for pos, _ in chunk]
            seeds = [
                sample_seed(self.sampling.seed, problems[pos].task_id, indices[pos][j]) for pos, j in chunk
            ]
            out = self._generate(prompts, seeds)
            for k, (pos, j) in enumerate(chunk):
                ids = out.completion_ids[k]
                completions[pos][j] = cut_at_stop(self.decode(ids), self.sampling.stop_strings)
                self.last_records[pos][j] = {"num_tokens": len(ids), "finish_reason": out.finish_reasons[k]}
        return completions

    def _chunks(self, lengths: list[int], rows: list[Any]) -> list[list[Any]]:
        """`rows` (sorted by prompt length, `lengths`) cut into generate calls of at most `batch_size` rows and
        `batch_tokens` prompt positions (rows x the longest prompt: the prefill computes the padding too), so that
        one long prompt does not pad a whole batch; a longer prompt goes alone. Compiled decoding keeps
        `batch_size` rows (its shapes are fixed)."""
        size = self.sampling.batch_size
        if self.options.get("compile"):
            return [rows[start : start + size] for start in range(0, len(rows), size)]
        budget = self.sampling.batch_tokens or size * 256
        chunks: list[list[Any]] = []
        current: list[Any] = []
        width = 0
        for length, row in zip(lengths, rows, strict=True):
            wider = max(width, length)
            if current and (len(current) >= size or (len(current) + 1) * wider > budget):
                chunks.append(current)
                current, wider = [], length
            current.append(row)
            width = wider
        if current:
            chunks.append(current)
        return chunks

    def _left_pad(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(ids) for ids in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(prompts), width, dtype=torch.long)
        for row, ids in enumerate(prompts):
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            mask[row, width - len(ids) :] = 1
        return input_ids.to(self.device), mask.to(self.device)

    def _static_cache(self, rows: int, width: int) -> Any:
        """For compiled decoding: one static cache of `batch_size` rows, kept from call to call, so every batch
        decodes with the same shapes and the step compiles once. It is sized by the first batch (the evaluator
        runs the longest prompts first), rounded up to 64 columns, and replaced (a recompilation) only when a
        later batch needs more."""
        from transformers import StaticCache

        needed = width + self.sampling.max_new_tokens
        limit = self.max_length
        if limit is not None:
            needed = min(needed, limit)
        cache = self._cache
        if cache is None or self._cache_len < needed:
            self._cache_len = (
                min(-(-needed // 64) * 64, limit) if limit is not None else -(-needed // 64) * 64
            )
            config: Any = getattr(self.model, "config", None)
            if config is None:
                raise ValueError(
                    "compiled decoding needs a transformers model (with a config) for its static cache"
                )
            cache = self._cache = StaticCache(config=config, max_cache_len=self._cache_len)
        return cache

    def _generate(self, prompts: list[list[int]], seeds: list[int]) -> Generated:
        """The family's generation of a batch of prompts (compiled: padded to `batch_size` rows, one shape)."""
        s = self.sampling
        real = len(prompts)
        options = dict(self.options)
        if options.get("compile"):
            filler = [prompts[-1][-1:]] * (s.batch_size - real)  # one-token rows, cut off below
            prompts, seeds = [*prompts, *filler], [*seeds, *([0] * len(filler))]
            options["cache"] = self._static_cache(len(prompts), max(len(ids) for ids in prompts))
        input_ids, mask = self._left_pad(prompts)
        request = GenerationRequest(
            max_new_tokens=s.max_new_tokens,
            do_sample=s.do_sample,
            temperature=s.temperature if s.do_sample else 1.0,
            top_p=s.top_p,
            top_k=s.top_k,
            eos_token_id=self.eos_id,
            pad_token_id=self.pad_id,
            stop_strings=tuple(s.stop_strings),
            decode=self.decode,
            seeds=tuple(seeds),
            options=options,
        )
        out = self.family.generate(self.model, input_ids, mask, request)
        if out.compile_seconds is not None and self.compile_seconds is None:
            self.compile_seconds = out.compile_seconds
        return Generated(out.completion_ids[:real], out.finish_reasons[:real], out.compile_seconds)
