"""Completion sources for the evaluator: sample completions of problem prompts from an HRM or a transformers LM."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from tqdm.auto import tqdm

from hrm_codegen.checkpoint import verify_export
from hrm_codegen.datasets.mbpp import encode_prompt
from hrm_codegen.datasets.problems import Problem
from hrm_codegen.generation import cut_at_stop, generate
from hrm_codegen.models.hrm_act_v1 import HierarchicalReasoningModel_ACTV1
from hrm_codegen.tokenization import FINGERPRINT_FILE, CodeTokenizer, load_tokenizer


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

    @property
    def do_sample(self) -> bool:
        """True unless decoding is greedy."""
        return self.temperature > 0


def sample_seed(seed: int, task_id: str, index: int) -> int:
    """A stable 63-bit seed for one (task, sample index), so a sample does not depend on batching or resume."""
    digest = hashlib.sha256(f"{seed}:{task_id}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def load_hf_model(
    path: str | Path, tokenizer: str | Path | None = None, device: str | torch.device = "cpu"
) -> tuple[nn.Module, Any]:
    """(model in eval mode, tokenizer) of a local transformers causal-LM directory (or a Hub name).

    A tokenizer saved by this project (with `fingerprint.txt`) loads as a `CodeTokenizer`, so prompts are
    encoded as in training (`[BOS] prompt`); any other loads as the plain Hugging Face tokenizer.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_path = Path(path).expanduser()
    if not model_path.is_dir() and str(path).startswith((".", "/", "~")):
        raise FileNotFoundError(f"model directory {model_path} does not exist")
    tokenizer_source = Path(tokenizer).expanduser() if tokenizer is not None else model_path
    if model_path.is_dir():
        verify_export(model_path)  # a baseline checkpoint's hf/: checked against its step's meta.json
    try:
        model = cast(nn.Module, AutoModelForCausalLM.from_pretrained(str(path)))
    except (OSError, ValueError) as err:
        raise ValueError(
            f"could not load a transformers causal LM from {path}: expected config.json and model weights "
            f"({str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__})"
        ) from err
    if (tokenizer_source / FINGERPRINT_FILE).is_file():
        hf_tokenizer: Any = load_tokenizer(tokenizer_source)
    else:
        try:
            hf_tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_source))
        except (OSError, ValueError) as err:
            raise ValueError(
                f"could not load a tokenizer from {tokenizer_source}; pass --tokenizer with a tokenizer "
                f"directory ({str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__})"
            ) from err
    return model.to(device).eval(), hf_tokenizer


class ModelCompletions:
    """A completion source (`hrm_codegen.evaluation.CompletionSource`) that samples from a model.

    The HRM decodes with `hrm_codegen.generation.generate` (KV cache; one seed per sample from
    `sample_seed`, so results do not depend on batching or resume); any other model with Hugging Face
    `generate` (left padding, the RNG seeded per batch). A `CodeTokenizer` encodes prompts as in training,
    `[BOS] prompt`; a plain Hugging Face tokenizer adds its own special tokens.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, sampling: SamplingConfig, progress: bool = True):
        self.model = model
        self.tokenizer = tokenizer
        self.sampling = sampling
        self.progress = progress
        self.device = next(model.parameters()).device
        hf: Any = tokenizer.hf if isinstance(tokenizer, CodeTokenizer) else tokenizer
        if hf.pad_token_id is None:
            hf.pad_token = hf.eos_token
        self.pad_id = cast(int, hf.pad_token_id)
        self.eos_id: int | None = hf.eos_token_id

    @property
    def max_length(self) -> int | None:
        """Positions the model can take (prompt plus completion), when the model has a limit."""
        if isinstance(self.model, HierarchicalReasoningModel_ACTV1):
            return self.model.config.seq_len
        return getattr(getattr(self.model, "config", None), "max_position_embeddings", None)

    def _prompt_ids(self, prompt: str) -> list[int]:
        """Prompt ids as in training (CodeTokenizer: `[BOS] prompt`) or the tokenizer's default."""
        if isinstance(self.tokenizer, CodeTokenizer):
            return encode_prompt(self.tokenizer, prompt)
        return self.tokenizer(prompt)["input_ids"]

    @property
    def prompt_room(self) -> int | None:
        """Most prompt tokens that still leave room to generate, when the model has a length limit."""
        limit = self.max_length
        return None if limit is None else limit - min(self.sampling.max_new_tokens, limit // 2)

    def encode(self, prompt: str) -> list[int]:
        """Prompt ids, made to fit: a prompt longer than `prompt_room` keeps its first token and its end.

        The end is the part next to where the code starts (for MBPP: the asserts naming the function).
        """
        ids, room = self._prompt_ids(prompt), self.prompt_room
        return ids if room is None or len(ids) <= room else [ids[0], *ids[len(ids) - room + 1 :]]

    def truncated_prompts(self, problems: Sequence[Problem]) -> list[str]:
        """Task ids whose prompts `encode` shortens to fit the model."""
        room = self.prompt_room
        if room is None:
            return []
        return [p.task_id for p in problems if len(self._prompt_ids(p.prompt)) > room]

    def decode(self, ids: list[int]) -> str:
        """Text of generated ids, without special tokens."""
        if isinstance(self.tokenizer, CodeTokenizer):
            return self.tokenizer.decode(ids)
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def __call__(self, problems: list[Problem], indices: list[list[int]]) -> list[list[str]]:
        """One completion per requested sample index of each problem."""
        encoded = [self.encode(p.prompt) for p in problems]
        rows = [(pos, j) for pos, wanted in enumerate(indices) for j in range(len(wanted))]
        rows.sort(key=lambda row: len(encoded[row[0]]))  # similar lengths share a batch: less padding
        completions = [[""] * len(wanted) for wanted in indices]
        size = self.sampling.batch_size
        chunks = [rows[start : start + size] for start in range(0, len(rows), size)]
        for chunk in tqdm(chunks, desc="generate", unit="batch", leave=False, disable=not self.progress):
            prompts = [encoded[pos] for pos, _ in chunk]
            seeds = [
                sample_seed(self.sampling.seed, problems[pos].task_id, indices[pos][j]) for pos, j in chunk
            ]
            for (pos, j), text in zip(chunk, self._generate(prompts, seeds), strict=True):
                completions[pos][j] = text
        return completions

    def _left_pad(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(ids) for ids in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(prompts), width, dtype=torch.long)
        for row, ids in enumerate(prompts):
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            mask[row, width - len(ids) :] = 1
        return input_ids.to(self.device), mask.to(self.device)

    def _generate(self, prompts: list[list[int]], seeds: list[int]) -> list[str]:
        """Completion texts (cut before the first stop string) of a batch of prompts."""
        s = self.sampling
        input_ids, mask = self._left_pad(prompts)
        sampling_args: dict[str, Any] = (
            {"do_sample": True, "temperature": s.temperature, "top_p": s.top_p, "top_k": s.top_k}
            if s.do_sample
            else {"do_sample": False}
        )
        if isinstance(self.model, HierarchicalReasoningModel_ACTV1):
            out = generate(
                self.model,
                input_ids,
                mask,
                max_new_tokens=s.max_new_tokens,
                eos_token_id=self.eos_id,
                pad_token_id=self.pad_id,
                stop_strings=s.stop_strings,
                tokenizer=self.decode,
                seed=seeds if s.do_sample else None,
                **sampling_args,
            )
            assert out.texts is not None
            return out.texts
        return self._hf_generate(input_ids, mask, seeds[0], sampling_args)

    def _hf_generate(
        self, input_ids: torch.Tensor, mask: torch.Tensor, seed: int, sampling_args: dict[str, Any]
    ) -> list[str]:
        """Completion texts from Hugging Face `generate` (stop strings end a sequence early)."""
        s = self.sampling
        max_new_tokens = s.max_new_tokens
        if self.max_length is not None:
            max_new_tokens = max(1, min(max_new_tokens, self.max_length - input_ids.shape[1]))
        hf = self.tokenizer.hf if isinstance(self.tokenizer, CodeTokenizer) else self.tokenizer
        torch.manual_seed(seed)
        with torch.no_grad():
            out = self.model.generate(  # type: ignore[operator]
                input_ids=input_ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                pad_token_id=self.pad_id,
                eos_token_id=self.eos_id,
                stop_strings=list(s.stop_strings) or None,
                tokenizer=hf if s.stop_strings else None,
                **sampling_args,
            )
        new = out[:, input_ids.shape[1] :].tolist()
        texts = []
        for ids in new:
            if self.eos_id is not None and self.eos_id in ids:
                ids = ids[: ids.index(self.eos_id)]
            texts.append(cut_at_stop(self.decode(ids), s.stop_strings))
        return texts
