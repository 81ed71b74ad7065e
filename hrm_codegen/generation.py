"""Autoregressive decoding for the HRM: greedy or sampled, with a KV cache, EOS and stop strings."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch

from hrm_codegen.models.layers import KVCache, StaticKVCache

if TYPE_CHECKING:
    from hrm_codegen.models.hrm_act_v1 import HierarchicalReasoningModel_ACTV1

Decoder = Callable[[list[int]], str]


@dataclass
class GenerationOutput:
    """Result of `generate`, one entry per returned sequence (prompt i, sample j at row i * n + j).

    `sequences` [N, P + T]: the left-padded prompts, then the new ids, right-padded with pad_token_id;
    `completion_ids`: the new ids up to the one that stopped the sequence (EOS left out);
    `finish_reasons`: "eos", "stop_string" or "length" (max_new_tokens or the model's seq_len);
    `texts` (with a tokenizer): the decoded completions cut before the first stop string;
    `logits` (return_logits=True) [N, T, vocab]: the raw next-token logits of each step.
    """

    sequences: torch.Tensor
    completion_ids: list[list[int]]
    finish_reasons: list[str]
    texts: list[str] | None = None
    logits: torch.Tensor | None = None
    compile_seconds: float | None = None  # wall time of this call's first compiled step (None: none compiled)


class StaticDecoder:
    """A `StaticKVCache` of `rows` x `max_len` positions and the one-token decoding step over it.

    With `compile`, the step is `torch.compile`d on its first call (inductor on the CPU,
    `mode="reduce-overhead"` (CUDA graphs) on CUDA) and its wall time, compilation included, is kept in
    `compile_seconds` (and `last_compile_seconds` until `generate` reads it). Every step has the same shapes
    (tokens [rows, 1], positions [rows, 1], keys over the whole buffer), so it compiles once per decoder.
    """

    def __init__(
        self, model: HierarchicalReasoningModel_ACTV1, rows: int, max_len: int, compile: bool
    ) -> None:
        self.model = model
        self.cache = StaticKVCache(max_len)
        self.compile = compile
        self.compile_seconds: float | None = None
        self.last_compile_seconds: float | None = None
        self._compiled: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
        self._new_mask = torch.ones(rows, 1, dtype=torch.bool, device=model.inner.H_init.device)

    def _eager_step(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        logits = self.model.lm_forward(tokens, self._new_mask, position_ids=positions, kv_cache=self.cache)
        return logits[:, -1]

    def step(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Next-token logits [rows, V] for one new token per row ([rows, 1] ids and positions)."""
        if not self.compile:
            return self._eager_step(tokens, positions)
        if self._compiled is None:
            on_cuda = tokens.is_cuda
            if on_cuda:  # CUDA graphs replay fixed addresses: the buffers the step writes must not move
                for tensor in self.cache.tensors():
                    torch._dynamo.mark_static_address(tensor)
            compiled = torch.compile(
                self._eager_step, mode="reduce-overhead" if on_cuda else None, dynamic=False
            )
            start = time.perf_counter()
            logits = compiled(tokens, positions).clone()
            self.compile_seconds = self.last_compile_seconds = time.perf_counter() - start
            self._compiled = compiled
            return logits
        return self._compiled(tokens, positions).clone()  # CUDA graphs overwrite their outputs on replay


def static_decoder(
    model: HierarchicalReasoningModel_ACTV1, rows: int, max_len: int, device: torch.device
) -> StaticDecoder:
    """The model's compiled decoder for `rows` x `max_len` (kept on the model, so later calls reuse it)."""
    decoders: dict[tuple[int, int, str], StaticDecoder] = model.__dict__.setdefault("_static_decoders", {})
    key = (rows, max_len, str(device))
    if key not in decoders:
        decoders[key] = StaticDecoder(model, rows, max_len, compile=True)
    return decoders[key]


def filter_logits(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> torch.Tensor:
    """Scale [N, V] logits by 1/temperature (fp32) and set tokens outside top-k / the top-p nucleus to -inf."""
    scores = logits.float() / temperature
    if 0 < top_k < scores.shape[-1]:
        kth = scores.topk(top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        sorted_scores, order = scores.sort(dim=-1, descending=True)
        probs = sorted_scores.softmax(-1)
        # Drop a token when the tokens ranked above it already carry top_p of the mass (the first always stays).
        drop_sorted = (probs.cumsum(-1) - probs) > top_p
        scores = scores.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    return scores


def next_tokens(
    logits: torch.Tensor,
    do_sample: bool,
    temperature: float,
    top_k: int,
    top_p: float,
    generators: list[torch.Generator],
) -> torch.Tensor:
    """Greedy or sampled next tokens of [N, V] logits; `generators`: none (global RNG), one shared, or one per row."""
    if not do_sample:
        return logits.argmax(-1)
    probs = filter_logits(logits, temperature, top_k, top_p).softmax(-1)
    if len(generators) <= 1:
        return torch.multinomial(probs, 1, generator=generators[0] if generators else None).squeeze(-1)
    return torch.cat([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, generators, strict=True)])


def _decoder(tokenizer: Any) -> Decoder | None:
    """The decode function of a tokenizer object (its `decode`) or of a decode callable; None for None."""
    decode = getattr(tokenizer, "decode", tokenizer)
    if decode is not None and not callable(decode):
        raise TypeError(
            f"tokenizer must have a decode method or be a callable, got {type(tokenizer).__name__}"
        )
    return cast("Decoder | None", decode)


def cut_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    """`text` up to (not including) the earliest occurrence of any stop string."""
    cut = min((i for i in (text.find(s) for s in stop_strings) if i >= 0), default=len(text))
    return text[:cut]


def _check_inputs(
    model: HierarchicalReasoningModel_ACTV1,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **args: Any,
) -> torch.Tensor:
    """Validate the arguments; return the boolean attention mask."""
    if input_ids.ndim != 2 or input_ids.shape[1] == 0:
        raise ValueError(
            f"input_ids must be [batch, prompt_len] with prompt_len >= 1, got {tuple(input_ids.shape)}"
        )
    mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    if mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask {tuple(mask.shape)} does not match input_ids {tuple(input_ids.shape)}"
        )
    if not bool(mask[:, -1].all()):
        raise ValueError("prompts must be left-padded: the last column of attention_mask must be all ones")
    longest = int(mask.sum(-1).max())
    if longest >= model.config.seq_len:
        raise ValueError(
            f"a prompt has {longest} tokens, which leaves no room to generate within the model's "
            f"seq_len={model.config.seq_len}"
        )
    if args["max_new_tokens"] < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {args['max_new_tokens']}")
    if args["num_return_sequences"] < 1:
        raise ValueError(f"num_return_sequences must be >= 1, got {args['num_return_sequences']}")
    if args["do_sample"]:
        if args["temperature"] <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {args['temperature']}")
        if not 0 < args["top_p"] <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {args['top_p']}")
        if args["top_k"] < 0:
            raise ValueError(f"top_k must be >= 0, got {args['top_k']}")
    if args["use_cache"] and not model.config.causal:
        raise ValueError("the KV cache needs causal attention (causal=true); pass use_cache=False")
    if args["cache_implementation"] not in ("static", "dynamic"):
        raise ValueError(
            f"cache_implementation must be 'static' or 'dynamic', got {args['cache_implementation']!r}"
        )
    if args["compile"] and not (args["use_cache"] and args["cache_implementation"] == "static"):
        raise ValueError(
            "compile=True compiles the one-token step over the static cache: needs use_cache=True "
            "and cache_implementation='static'"
        )
    if args["stop_strings"] and args["decode"] is None:
        raise ValueError("stop_strings need a tokenizer (or a decode callable) to decode the new tokens")
    return mask


@torch.no_grad()
def generate(
    model: HierarchicalReasoningModel_ACTV1,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    max_new_tokens: int = 256,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    stop_strings: Sequence[str] | None = None,
    tokenizer: Any = None,
    num_return_sequences: int = 1,
    use_cache: bool = True,
    seed: int | Sequence[int] | None = None,
    return_logits: bool = False,
    token_type_ids: torch.Tensor | None = None,
    cache_implementation: str = "static",
    compile: bool = False,
) -> GenerationOutput:
    """Decode continuations of left-padded prompts [B, P] with the HRM (every ACT segment per token).

    Each sequence stops at EOS, at a stop string, after `max_new_tokens`, or when it fills the model's
    `seq_len` positions. `tokenizer` (with `decode`, `eos_id`, `pad_id`) or a decode callable is needed
    for `stop_strings` and gives the trimmed `texts`; `eos_token_id`/`pad_token_id` default to its ids.
    `use_cache=False` recomputes the whole sequence at every step (the reference the cache must match).
    `seed` seeds one RNG for the batch, or one RNG per returned sequence when it is a list of N seeds, which
    makes each sequence's sample independent of what else is in the batch.
    `cache_implementation` (transformers' word): "static" (default), a preallocated cache over which every
    one-token step has the same shapes, or "dynamic", the growing reference cache. `compile=True` (static
    cache only) decodes with a `torch.compile`d step, compiled on first use and kept on the model for later
    calls of the same batch size; `GenerationOutput.compile_seconds` reports that first call's wall time.
    `token_type_ids` [B, P] (1 = prompt token; used when the model's config has prefix_lm) makes the prompt
    bidirectional: the cache is prefilled with the prefix mask and the new tokens (type 0) decode causally.
    """
    decode = _decoder(tokenizer)
    mask = _check_inputs(
        model,
        input_ids,
        attention_mask,
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        stop_strings=stop_strings,
        num_return_sequences=num_return_sequences,
        use_cache=use_cache,
        decode=decode,
        cache_implementation=cache_implementation,
        compile=compile,
    )
    if eos_token_id is None:
        eos_token_id = getattr(tokenizer, "eos_id", None)
    eos_ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or ())
    if pad_token_id is None:
        pad_token_id = getattr(tokenizer, "pad_id", None)
        pad_token_id = pad_token_id if pad_token_id is not None else (eos_ids[0] if eos_ids else 0)
    stops = tuple(stop_strings or ())
    device = input_ids.device

    n = num_return_sequences
    expand = torch.arange(input_ids.shape[0], device=device).repeat_interleave(n)
    prompt_len = mask.sum(-1)[expand]  # real tokens per returned sequence
    budget = (model.config.seq_len - prompt_len).clamp(max=max_new_tokens).tolist()  # new tokens allowed
    total = len(expand)
    max_steps = max(budget)
    seeds = [seed] if isinstance(seed, int) else list(seed) if seed is not None else []
    if len(seeds) > 1 and len(seeds) != total:
        raise ValueError(f"seed: got {len(seeds)} seeds for {total} returned sequences; pass one or one each")
    generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]  # [] = torch's global RNG
    new_ids = torch.full((total, max_steps), pad_token_id, dtype=torch.long, device=device)
    step_logits: list[torch.Tensor] = []
    finish_reasons = ["length"] * total
    lengths = [0] * total  # new tokens of each sequence, including the one that stopped it

    ids, ids_mask, ids_types = input_ids, mask, token_type_ids
    cache: KVCache | None = None
    decoder: StaticDecoder | None = None
    compile_seconds = None
    if use_cache and cache_implementation == "static":
        # Fixed rows (finished ones keep stepping on pad tokens) so each step has the same shapes.
        width = input_ids.shape[1] + max_steps
        decoder = (
            static_decoder(model, total, max(width, model.config.seq_len), device)
            if compile
            else StaticDecoder(model, total, width, compile=False)
        )
        decoder.cache.reset()
        cache = decoder.cache
        types = token_type_ids[expand] if token_type_ids is not None else None
        logits = model.lm_forward(input_ids[expand], mask[expand], types, kv_cache=cache, logits_to_keep=1)
        logits = logits[:, -1]
    elif use_cache:
        cache = KVCache()
        logits = model.lm_forward(input_ids, mask, token_type_ids, kv_cache=cache, logits_to_keep=1)[:, -1]
        if n > 1:
            cache.reorder(expand)
            logits = logits[expand]
    else:
        ids, ids_mask = input_ids[expand], mask[expand]
        ids_types = token_type_ids[expand] if token_type_ids is not None else None
        logits = model.lm_forward(ids, ids_mask, ids_types, logits_to_keep=1)[:, -1]

    active = torch.arange(total, device=device)  # returned-sequence index of each row still decoding
    all_tokens = torch.full(
        (total,), pad_token_id, dtype=torch.long, device=device
    )  # static: every row's input
    for step in range(max_steps):
        if return_logits:
            full = logits.new_zeros(total, logits.shape[-1])
            step_logits.append(full.index_copy_(0, active, logits))
        row_generators = [generators[i] for i in active.tolist()] if len(generators) > 1 else generators
        tokens = next_tokens(logits, do_sample, temperature, top_k, top_p, row_generators)
        new_ids[active, step] = tokens
        done = torch.zeros_like(tokens, dtype=torch.bool)
        for eos in eos_ids:
            done |= tokens == eos
        done_list = done.tolist()
        for row, seq in enumerate(active.tolist()):
            if done_list[row]:
                finish_reasons[seq] = "eos"
            elif stops and tail_has_stop(new_ids[seq, : step + 1].tolist(), stops, decode):  # type: ignore[arg-type]
                finish_reasons[seq] = "stop_string"
                done_list[row] = True
            elif step + 1 >= budget[seq]:
                done_list[row] = True
            if done_list[row]:
                lengths[seq] = step + 1
        keep = ~torch.tensor(done_list, dtype=torch.bool, device=device)
        if not bool(keep.any()):
            break
        if decoder is not None:
            all_tokens[active] = tokens
        if not bool(keep.all()):
            rows = keep.nonzero().squeeze(-1)
            active, tokens = active[rows], tokens[rows]
            if decoder is not None:
                pass  # the static cache keeps every row
            elif cache is not None:
                cache.reorder(rows)
            else:
                ids, ids_mask = ids[rows], ids_mask[rows]
                ids_types = ids_types[rows] if ids_types is not None else None
        if decoder is not None:
            # Real tokens before the new one; rows that finished may run past the model's positions: clamp.
            positions = (prompt_len + step).clamp(max=model.config.seq_len - 1)[:, None]
            logits = decoder.step(all_tokens[:, None], positions)[active]
            if decoder.last_compile_seconds is not None:
                compile_seconds, decoder.last_compile_seconds = decoder.last_compile_seconds, None
            continue
        new_mask = torch.ones(len(active), 1, dtype=torch.bool, device=device)
        if cache is not None:
            positions = (prompt_len[active] + step)[:, None]  # real tokens before the new one
            logits = model.lm_forward(tokens[:, None], new_mask, position_ids=positions, kv_cache=cache)
            logits = logits[:, -1]
        else:
            ids, ids_mask = torch.cat([ids, tokens[:, None]], 1), torch.cat([ids_mask, new_mask], 1)
            if ids_types is not None:  # generated tokens are not prefix
                ids_types = torch.cat([ids_types, torch.zeros_like(tokens)[:, None]], 1)
            logits = model.lm_forward(ids, ids_mask, ids_types, logits_to_keep=1)[:, -1]

    out = _finish(input_ids[expand], new_ids, lengths, finish_reasons, decode, stops, step_logits)
    out.compile_seconds = compile_seconds
    return out


def tail_has_stop(ids: Sequence[int], stops: Sequence[str], decode: Decoder) -> bool:
    """Whether the text of the last generated tokens holds a stop string.

    Only a tail window is decoded (a stop string of L characters spans at most L tokens, plus two for a
    token split across a multi-byte character), so checking every step costs O(1) in the completion length.
    """
    if not stops:
        return False
    window = max(len(s) for s in stops) + 2
    text = decode(list(ids[-window:]))
    return any(s in text for s in stops)


def _finish(
    prompts: torch.Tensor,
    new_ids: torch.Tensor,
    lengths: list[int],
    finish_reasons: list[str],
    decode: Decoder | None,
    stops: tuple[str, ...],
    step_logits: list[torch.Tensor],
) -> GenerationOutput:
    """Build the output: completions without their EOS, texts cut before the first stop string."""
    completion_ids = [
        new_ids[seq, : length - (reason == "eos")].tolist()
        for seq, (length, reason) in enumerate(zip(lengths, finish_reasons, strict=True))
    ]
    texts = [cut_at_stop(decode(ids), stops) for ids in completion_ids] if decode is not None else None
    return GenerationOutput(
        sequences=torch.cat([prompts, new_ids[:, : max(lengths, default=0)]], 1),
        completion_ids=completion_ids,
        finish_reasons=finish_reasons,
        texts=texts,
        logits=torch.stack(step_logits, 1) if step_logits else None,
    )
