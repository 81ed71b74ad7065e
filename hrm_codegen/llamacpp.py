"""The CPU speed reference: llama.cpp, through `llama-cpp-python` (the optional extra `bench`; it builds llama.cpp
from source, which takes minutes), decoding a GGUF greedily from the same prompt ids as the project's models.

Nothing else in the package imports this module: `import hrm_codegen` and the tests never need llama.cpp.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# llama.cpp's file types (`enum llama_ftype` in llama.h) for the GGUFs written here
FTYPES = {"F16": 1, "Q8_0": 7, "Q4_1": 3}


def llama_cpp() -> Any:
    """The `llama_cpp` module, or an ImportError that says how to install it."""
    try:
        import llama_cpp as module  # pyright: ignore[reportMissingImports]  # optional extra "bench"
    except ImportError as err:
        raise ImportError(
            "llama.cpp is the optional extra 'bench': .venv/bin/pip install -e '.[bench]' (llama-cpp-python, "
            "built from source: minutes)"
        ) from err
    return module


def requantize_gguf(source: str | Path, out: str | Path, kind: str, threads: int = 1) -> Path:
    """Write `source` GGUF with its weights in `kind` (F16, Q8_0, Q4_1) through llama.cpp's own quantizer
    (`llama_model_quantize`, what `llama-quantize` runs; a quantized source is dequantized first). Kept when
    `out` already exists."""
    if kind not in FTYPES:
        raise ValueError(f"GGUF type must be one of {', '.join(FTYPES)}, got {kind!r}")
    out = Path(out)
    if out.is_file():
        return out
    lib = llama_cpp()
    params = lib.llama_model_quantize_default_params()
    params.ftype = FTYPES[kind]
    params.allow_requantize = True
    params.nthread = threads
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    status = lib.llama_model_quantize(str(source).encode(), str(partial).encode(), params)
    if status != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"llama.cpp could not write {kind} from {source} (status {status})")
    partial.rename(out)
    return out


@dataclass
class Decoded:
    """One greedy completion: the new ids (up to what stopped it), the seconds it took (prompt included)."""

    ids: list[int]
    seconds: float


class LlamaCppGreedy:
    """Greedy decoding of prompt ids with llama.cpp, stopping at EOS, a stop string or `max_new_tokens`;
    `prompt_lookup` N > 0: with prompt lookup decoding (up to N draft tokens from the last matching 2-gram)."""

    def __init__(self, gguf: str | Path, threads: int, n_ctx: int = 2048, prompt_lookup: int = 0):
        lib = llama_cpp()
        draft = None
        if prompt_lookup:  # llama-cpp-python's prompt lookup decoding: drafts verified in one llama.cpp batch
            from llama_cpp.llama_speculative import (  # pyright: ignore[reportMissingImports]
                LlamaPromptLookupDecoding,
            )

            draft = LlamaPromptLookupDecoding(max_ngram_size=2, num_pred_tokens=prompt_lookup)
        self.model = lib.Llama(
            model_path=str(gguf),
            n_ctx=n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
            draft_model=draft,
        )
        self.eos = self.model.token_eos()

    def detokenize(self, ids: list[int]) -> str:
        """Text of token ids (llama.cpp's own detokenizer)."""
        return self.model.detokenize(ids).decode("utf-8", errors="ignore")

    def __call__(
        self,
        prompt_ids: Sequence[int],
        max_new_tokens: int,
        stops: Sequence[str] = (),
        decode: Callable[[list[int]], str] | None = None,
    ) -> Decoded:
        start = time.perf_counter()
        ids: list[int] = []
        self.model.reset()
        window = max((len(s) for s in stops), default=0) + 2
        for token in self.model.generate(list(prompt_ids), top_k=1, temp=0.0, reset=True):
            if token == self.eos:
                break
            ids.append(int(token))
            if len(ids) >= max_new_tokens:
                break
            if stops and decode is not None and any(s in decode(ids[-window:]) for s in stops):
                break
        return Decoded(ids, time.perf_counter() - start)
