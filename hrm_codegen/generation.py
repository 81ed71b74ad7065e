"""Decoding for every model family through transformers' `generate`: greedy, sampled (one generator per
sequence), beam search; a dynamic or static KV cache, `torch.compile`d steps, prompt lookup decoding; stop
strings on the generated text only. The HRM (`HrmCodegenForCausalLM`) and the transformers baselines take exactly the same path."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from transformers import (
    CompileConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

Decoder = Callable[[list[int]], str]


@dataclass
class GenerationOutput:
    """Result of `generate`, one entry per returned sequence (prompt i, sample j at row i * n + j).

    `sequences` [N, P + T]: the left-padded prompts, then the new ids, right-padded with pad_token_id;
    `completion_ids`: the new ids up to the one that stopped the sequence (EOS left out);
    `finish_reasons`: "eos", "stop_string" or "length" (max_new_tokens or the model's positions);
    `texts` (with a tokenizer): the decoded completions cut before the first stop string;
    `logits` (return_logits=True) [N, T, vocab]: the raw next-token logits of each step;
    `compile_seconds`: the wall time of a call that compiled the decoding step (compilation included).
    """

    sequences: torch.Tensor
    completion_ids: list[list[int]]
    finish_reasons: list[str]
    texts: list[str] | None = None
    logits: torch.Tensor | None = None
    compile_seconds: float | None = None
    decode_seconds: float | None = None


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


def cut_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    """`text` up to (not including) the earliest occurrence of any stop string."""
    cut = min((i for i in (text.find(s) for s in stop_strings) if i >= 0), default=len(text))
    return text[:cut]


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


class StopOnGeneratedText(StoppingCriteria):
    """Stops a row when the text it generated (never the prompt) holds a stop string."""

    def __init__(self, prompt_width: int, stops: tuple[str, ...], decode: Decoder):
        self.prompt_width, self.stops, self.decode = prompt_width, stops, decode

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        new = input_ids[:, self.prompt_width :].tolist()
        done = [tail_has_stop(ids, self.stops, self.decode) for ids in new]
        return cast(torch.BoolTensor, torch.tensor(done, dtype=torch.bool, device=input_ids.device))


class StopAtPositions(StoppingCriteria):
    """Stops a row when its real tokens (prompt without padding, plus what it generated) fill `limit` positions."""

    def __init__(self, prompt_width: int, prompt_lengths: torch.Tensor, limit: int):
        self.prompt_width, self.prompt_lengths, self.limit = prompt_width, prompt_lengths, limit

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        lengths = self.prompt_lengths.repeat_interleave(input_ids.shape[0] // len(self.prompt_lengths))
        done = lengths.to(input_ids.device) + (input_ids.shape[1] - self.prompt_width) >= self.limit
        return cast(torch.BoolTensor, done)


class PerRowSampler(LogitsProcessor):
    """Samples each row's next token with that row's own generator (`next_tokens`) and leaves only that token
    possible, so greedy `generate` emits it: with one seed per row a completion depends on its own seed alone,
    never on the other rows of its batch (transformers' own sampling draws every row from one global RNG)."""

    def __init__(
        self, seeds: Sequence[int], temperature: float, top_k: int, top_p: float, device: torch.device
    ):
        self.generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        tokens = next_tokens(scores.float(), True, self.temperature, self.top_k, self.top_p, self.generators)
        chosen = torch.full_like(scores, float("-inf"))
        return cast(torch.FloatTensor, chosen.scatter_(1, tokens[:, None], 0.0))


def compile_options(compile: bool, device: torch.device) -> dict[str, Any]:
    """transformers' `generate` options for a `torch.compile`d decoding step: a static cache (constant shapes)
    and a compile config (CUDA graphs on CUDA; plain inductor elsewhere, forced on the CPU, where transformers
    would not compile by itself). compile=False: no automatic compilation either."""
    if not compile:
        return {"disable_compile": True}
    config = CompileConfig(mode="reduce-overhead" if device.type == "cuda" else "default")
    config._compile_all_devices = True  # type: ignore[assignment]
    return {"cache_implementation": "static", "compile_config": config}


def _decoder(tokenizer: Any) -> Decoder | None:
    """The decode function of a tokenizer object (its `decode`) or of a decode callable; None for None."""
    decode = getattr(tokenizer, "decode", tokenizer)
    if decode is not None and not callable(decode):
        raise TypeError(
            f"tokenizer must have a decode method or be a callable, got {type(tokenizer).__name__}"
        )
    return cast("Decoder | None", decode)


def max_positions(model: Any) -> int | None:
    """The positions a model can take (the HRM's seq_len, a transformers model's max_position_embeddings)."""
    return getattr(getattr(model, "config", None), "max_position_embeddings", None)


def _check(input_ids: torch.Tensor, mask: torch.Tensor, limit: int | None, **args: Any) -> None:
    if input_ids.ndim != 2 or input_ids.shape[1] == 0:
        raise ValueError(
            f"input_ids must be [batch, prompt_len] with prompt_len >= 1, got {tuple(input_ids.shape)}"
        )
    if mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask {tuple(mask.shape)} does not match input_ids {tuple(input_ids.shape)}"
        )
    if not bool(mask[:, -1].all()):
        raise ValueError("prompts must be left-padded: the last column of attention_mask must be all ones")
    longest = int(mask.sum(-1).max())
    if limit is not None and longest >= limit:
        raise ValueError(
            f"a prompt has {longest} tokens, which leaves no room to generate within the model's {limit} positions"
        )
    for key in ("max_new_tokens", "num_return_sequences", "num_beams"):
        if args[key] < 1:
            raise ValueError(f"{key} must be >= 1, got {args[key]}")
    if args["do_sample"]:
        if args["temperature"] <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {args['temperature']}")
        if not 0 < args["top_p"] <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {args['top_p']}")
        if args["top_k"] < 0:
            raise ValueError(f"top_k must be >= 0, got {args['top_k']}")
        if args["num_beams"] > 1:
            raise ValueError("sampling with beam search is not supported: num_beams=1 when do_sample")
    if args["cache_implementation"] not in (None, "static", "dynamic"):
        raise ValueError(
            f"cache_implementation must be 'static' or 'dynamic', got {args['cache_implementation']!r}"
        )
    if args["compile"] and (not args["use_cache"] or args["cache_implementation"] == "dynamic"):
        raise ValueError(
            "compile=True compiles the one-token step over the static cache: needs use_cache=True and "
            "cache_implementation='static' (or unset)"
        )
    if args["stop_strings"] and args["decode"] is None:
        raise ValueError("stop_strings need a tokenizer (or a decode callable) to decode the new tokens")
    if args["prompt_lookup"] < 0:
        raise ValueError(f"prompt_lookup must be >= 0 (0 = off), got {args['prompt_lookup']}")
    if args["prompt_lookup"]:
        clash = [
            what
            for what, on in (
                ("do_sample=True", args["do_sample"]),
                ("num_beams > 1", args["num_beams"] > 1),
                ("use_cache=False", not args["use_cache"]),
                ("compile=True", args["compile"]),
                ("a static cache", args["cache_implementation"] == "static"),
                ("return_logits=True", args["return_logits"]),
                ("a prefix_mask (PrefixLM)", args["prefix_mask"]),
                ("token_type_ids", args["token_type_ids"]),
                ("per-token exits (an HRM exit threshold)", args["exits"]),
            )
            if on
        ]
        if clash:
            raise ValueError(
                f"prompt_lookup (prompt lookup decoding) is greedy over the dynamic cache; it cannot run with "
                f"{clash[0]}"
            )


@torch.no_grad()
def generate(
    model: Any,
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
    num_beams: int = 1,
    use_cache: bool = True,
    seed: int | Sequence[int] | None = None,
    return_logits: bool = False,
    prefix_mask: torch.Tensor | None = None,
    token_type_ids: torch.Tensor | None = None,
    cache_implementation: str | None = None,
    compile: bool = False,
    prune_finished: bool = True,
    streamer: Any = None,
    cache: Any = None,
    prompt_lookup: int = 0,
) -> GenerationOutput:
    """Decode continuations of left-padded prompts [B, P] with any transformers causal LM (the HRM included).

    Each sequence stops at EOS, at a stop string, after `max_new_tokens`, or when it fills the model's
    positions. `tokenizer` (with `decode`, `eos_id`, `pad_id`) or a decode callable is needed for
    `stop_strings` and gives the trimmed `texts`; `eos_token_id`/`pad_token_id` default to its ids.
    `use_cache=False` recomputes the whole sequence at every step (the reference the cache must match).
    `seed` seeds one RNG for the batch, or one RNG per returned sequence when it is a list of N seeds, which
    makes each sequence's sample independent of what else is in the batch. `cache_implementation`: "dynamic"
    (transformers' default) or "static" (a preallocated cache: every one-token step has the same shapes);
    `compile=True` decodes with a `torch.compile`d step over a static cache (compiled on first use, kept by
    transformers for later calls). `prefix_mask` [B, P] (True on prompt tokens; the HRM's PrefixLM) makes the
    prompt bidirectional and the new tokens decode causally; `token_type_ids` [B, P] are passed on to models
    that take them instead (transformers' HRM-Text reads them at the prefill).
    `prune_finished` (default): greedy or sampled decoding over the dynamic cache drops a row from the batch as
    soon as it finishes (`_decode_pruned`), giving the tokens transformers' `generate` gives; beam search, a
    static or compiled cache, `return_logits` and `use_cache=False` go through transformers' `generate`, where
    finished rows keep stepping on pad tokens. `streamer` (transformers' `TextStreamer` or anything with
    `put`/`end`) receives the prompt, then each new token of the first row. `cache`: a caller's static cache
    (`transformers.StaticCache`), reset and reused, so that calls with the same batch size decode with the same
    shapes whatever their prompt lengths (a compiled step then compiles once; `compile=True` implies it).
    `prompt_lookup` N > 0 (greedy only): prompt lookup decoding (transformers' `prompt_lookup_num_tokens`): the
    continuation of the last matching 2-gram earlier in the sequence (prompt or generated) is proposed as up to N
    draft tokens and verified in one forward, which keeps the greedy tokens (up to floating-point ties) and
    saves steps where the code repeats names from the prompt or from itself. transformers' assisted decoding
    takes one row at a time, so the rows of a batch are decoded one after another (`_decode_prompt_lookup`).
    """
    decode = _decoder(tokenizer)
    mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    limit = max_positions(model)
    _check(
        input_ids,
        mask,
        limit,
        max_new_tokens=max_new_tokens,
        num_return_sequences=num_return_sequences,
        num_beams=num_beams,
        do_sample=do_sample,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        cache_implementation=cache_implementation,
        compile=compile,
        use_cache=use_cache,
        stop_strings=stop_strings,
        decode=decode,
        prompt_lookup=prompt_lookup,
        return_logits=return_logits,
        prefix_mask=prefix_mask is not None,
        token_type_ids=token_type_ids is not None,
        exits=getattr(getattr(model, "model", None), "exit_threshold", None) is not None,
    )
    if eos_token_id is None:
        eos_token_id = getattr(tokenizer, "eos_id", None)
    eos_ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or ())
    if pad_token_id is None:
        pad_token_id = getattr(tokenizer, "pad_id", None)
        pad_token_id = pad_token_id if pad_token_id is not None else (eos_ids[0] if eos_ids else 0)
    stops = tuple(stop_strings or ())
    device = input_ids.device
    rows = input_ids.shape[0] * num_return_sequences
    prompt_lengths = mask.sum(-1).repeat_interleave(num_return_sequences)  # real tokens per returned sequence
    criteria: list[StoppingCriteria] = []
    if limit is not None:  # positions count real tokens: each row stops when it fills the model's positions
        max_new_tokens = min(max_new_tokens, limit - int(prompt_lengths.min()))
        criteria.append(StopAtPositions(input_ids.shape[1], prompt_lengths, limit))

    options: dict[str, Any] = {"do_sample": False}  # sampling is done by PerRowSampler, then picked greedily
    if do_sample:
        seeds = [seed] if isinstance(seed, int) else list(seed) if seed is not None else []
        if len(seeds) > 1 and len(seeds) != rows:
            raise ValueError(
                f"seed: got {len(seeds)} seeds for {rows} returned sequences; pass one or one each"
            )
        seeds = seeds or [int(torch.randint(0, 2**62, ()).item())]
        options["logits_processor"] = LogitsProcessorList(
            [PerRowSampler(seeds, temperature, top_k, top_p, device)]
        )
    if stops:
        assert decode is not None
        criteria.append(StopOnGeneratedText(input_ids.shape[1], stops, decode))
    if criteria:
        options["stopping_criteria"] = StoppingCriteriaList(criteria)
    if use_cache:
        options.update(compile_options(compile, device))
        if cache_implementation is not None:
            options["cache_implementation"] = cache_implementation
    if cache is not None:
        if not use_cache or not getattr(cache, "is_compileable", False):
            raise ValueError("cache= takes a static cache (transformers.StaticCache) and use_cache=True")
        cache.reset()
        options.pop("cache_implementation", None)
        options["cache"] = cache
    if num_beams == 1 and num_return_sequences > 1:  # transformers' greedy search returns one per row: expand
        input_ids, mask = (
            input_ids.repeat_interleave(num_return_sequences, 0),
            mask.repeat_interleave(num_return_sequences, 0),
        )
        prefix_mask = None if prefix_mask is None else prefix_mask.repeat_interleave(num_return_sequences, 0)
        if token_type_ids is not None:
            token_type_ids = token_type_ids.repeat_interleave(num_return_sequences, 0)
        num_return_sequences = 1
    if prefix_mask is not None:
        options["prefix_mask"] = prefix_mask.bool()
    if token_type_ids is not None:
        options["token_type_ids"] = token_type_ids
    budgets = [
        max_new_tokens if limit is None else min(max_new_tokens, limit - n) for n in prompt_lengths.tolist()
    ]
    if prompt_lookup:
        start = time.perf_counter()
        sequences = _decode_prompt_lookup(
            model, input_ids, mask, budgets, prompt_lookup, eos_ids, pad_token_id, stops, decode, streamer
        )
        result = _finish(input_ids.shape[1], sequences, eos_ids, stops, decode, budgets)
        result.decode_seconds = time.perf_counter() - start
        return result
    pruned = prune_finished and use_cache and num_beams == 1 and not return_logits and not compile
    if pruned and cache_implementation != "static" and cache is None:
        start = time.perf_counter()
        sampler = cast(PerRowSampler, options["logits_processor"][0]) if do_sample else None
        sequences = _decode_pruned(
            model,
            input_ids,
            mask,
            budgets,
            eos_ids=eos_ids,
            pad_token_id=pad_token_id,
            stops=stops,
            decode=decode,
            sampler=sampler,
            prefix_mask=prefix_mask,
            token_type_ids=token_type_ids,
            streamer=streamer,
        )
        result = _finish(input_ids.shape[1], sequences, eos_ids, stops, decode, budgets)
        result.decode_seconds = time.perf_counter() - start
        return result
    if streamer is not None:
        options["streamer"] = streamer
    already_compiled = getattr(model, "_compiled_call", None) is not None
    start = time.perf_counter()
    out = model.generate(
        input_ids=input_ids,
        attention_mask=mask.long(),
        max_new_tokens=max_new_tokens,
        num_return_sequences=num_return_sequences,
        num_beams=num_beams,
        eos_token_id=eos_ids or None,
        pad_token_id=pad_token_id,
        use_cache=use_cache,
        return_dict_in_generate=True,
        output_logits=return_logits,
        **options,
    )
    seconds = time.perf_counter() - start
    compiled_now = compile and not already_compiled and getattr(model, "_compiled_call", None) is not None
    if num_beams > 1:  # the returned sequences of beam search: num_return_sequences per prompt
        budgets = [max_new_tokens] * out.sequences.shape[0]
    result = _finish(input_ids.shape[1], out.sequences, eos_ids, stops, decode, budgets)
    if return_logits and out.logits:
        result.logits = torch.stack(list(out.logits), 1)
    result.compile_seconds = seconds if compiled_now else None
    result.decode_seconds = seconds
    return result


def _decode_prompt_lookup(
    model: Any,
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    budgets: list[int],
    draft_tokens: int,
    eos_ids: list[int],
    pad_token_id: int,
    stops: tuple[str, ...],
    decode: Decoder | None,
    streamer: Any,
) -> torch.Tensor:
    """Greedy prompt lookup decoding of each row on its own (its real prompt, padding stripped) through
    transformers' assisted `generate`, stopping where `generate` stops (EOS, a stop string in the new text, the
    row's budget of new tokens). Returns the sequences [B, P + T] as `_decode_pruned` does."""
    rows, width = input_ids.shape
    generated: list[list[int]] = []
    for row in range(rows):
        real = int(mask[row].sum())
        ids = input_ids[row : row + 1, width - real :]
        criteria = StoppingCriteriaList(
            [StopOnGeneratedText(real, stops, decode)] if stops and decode else []
        )
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=budgets[row],
            do_sample=False,
            prompt_lookup_num_tokens=draft_tokens,
            eos_token_id=eos_ids or None,
            pad_token_id=pad_token_id,
            stopping_criteria=criteria,
            streamer=streamer if row == 0 else None,
            disable_compile=True,
        )
        generated.append(out[0, real:].tolist())
    return _right_padded(input_ids, generated, pad_token_id)


def _decode_pruned(
    model: Any,
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    budgets: list[int],
    *,
    eos_ids: list[int],
    pad_token_id: int,
    stops: tuple[str, ...],
    decode: Decoder | None,
    sampler: PerRowSampler | None,
    prefix_mask: torch.Tensor | None,
    token_type_ids: torch.Tensor | None,
    streamer: Any,
) -> torch.Tensor:
    """Greedy or per-row-sampled decoding over a dynamic cache in which a finished row stops costing compute:
    the rows still running are selected out of the cache (`Cache.batch_select_indices`) as soon as one ends.

    Every step calls the model as transformers' `generate` does (the new tokens, the mask over the cached and
    new keys, positions counted over real tokens, logits of the last position only), so a row's tokens are
    the ones `generate` gives it. Returns the sequences [B, P + T]: prompts, then the new ids right-padded
    with `pad_token_id`.
    """
    rows = input_ids.shape[0]
    generated: list[list[int]] = [[] for _ in range(rows)]
    live = list(range(rows))  # original row of each row still decoding
    ids, keys = input_ids, mask.long()
    generators = list(sampler.generators) if sampler is not None else []
    cache: Any = None
    new_ids = ids
    eos = set(eos_ids)
    if streamer is not None:
        streamer.put(input_ids.cpu())
    while live:
        past = 0 if cache is None else ids.shape[1] - new_ids.shape[1]
        positions = (keys.cumsum(-1) - 1).clamp(min=0)[:, past:]
        limit = max_positions(model)
        if limit is not None:  # rows decoding past their budget's end never reach here; pads may count high
            positions = positions.clamp(max=limit - 1)
        kwargs: dict[str, Any] = {}
        if prefix_mask is not None:
            kwargs["prefix_mask"] = prefix_mask
        if token_type_ids is not None and cache is None:
            kwargs["token_type_ids"] = token_type_ids
        out = model(
            input_ids=new_ids,
            attention_mask=keys,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
            **kwargs,
        )
        cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
        logits = out.logits[:, -1, :].float()
        if sampler is not None:
            tokens = next_tokens(logits, True, sampler.temperature, sampler.top_k, sampler.top_p, generators)
        else:
            tokens = logits.argmax(-1)
        if streamer is not None:
            streamer.put(tokens[:1].cpu())
        keep = []
        for k, (row, token) in enumerate(zip(live, tokens.tolist(), strict=True)):
            generated[row].append(token)
            done = (
                token in eos
                or len(generated[row]) >= budgets[row]
                or (decode is not None and tail_has_stop(generated[row], stops, decode))
            )
            if not done:
                keep.append(k)
        if len(keep) < len(live):
            if not keep:
                break
            index = torch.tensor(keep, device=ids.device)
            cache.batch_select_indices(index)
            ids, keys, tokens = ids[index], keys[index], tokens[index]
            prefix_mask = None if prefix_mask is None else prefix_mask[index]
            generators = [generators[k] for k in keep] if len(generators) > 1 else generators
            live = [live[k] for k in keep]
        new_ids = tokens[:, None]
        ids = torch.cat([ids, new_ids], dim=1)
        keys = F.pad(keys, (0, 1), value=1)
    if streamer is not None:
        streamer.end()
    return _right_padded(input_ids, generated, pad_token_id)


def _right_padded(input_ids: torch.Tensor, generated: list[list[int]], pad_token_id: int) -> torch.Tensor:
    """The sequences [B, P + T]: the (left-padded) prompts, then each row's new ids right-padded with
    `pad_token_id` to the longest row's."""
    rows, width = input_ids.shape
    longest = max((len(g) for g in generated), default=0)
    sequences = torch.full((rows, width + longest), pad_token_id, dtype=torch.long, device=input_ids.device)
    sequences[:, :width] = input_ids
    for row, tokens_of_row in enumerate(generated):
        if tokens_of_row:
            sequences[row, width : width + len(tokens_of_row)] = torch.tensor(tokens_of_row)
    return sequences


def _finish(
    prompt_width: int,
    sequences: torch.Tensor,
    eos_ids: list[int],
    stops: tuple[str, ...],
    decode: Decoder | None,
    budgets: list[int],
) -> GenerationOutput:
    """Per row: the new ids up to what stopped it (EOS left out), why, and the text cut before a stop string;
    `budgets`: the new tokens each row may have (max_new_tokens, or fewer where the model's positions end)."""
    completion_ids, reasons = [], []
    for ids, budget in zip(sequences[:, prompt_width:].tolist(), budgets, strict=True):
        ids = ids[:budget]
        eos_at = next((i for i, t in enumerate(ids) if t in eos_ids), None)
        head = ids[:eos_at] if eos_at is not None else ids
        end = _stop_end(head, stops, decode)
        if end is not None:
            completion_ids.append(head[:end])
            reasons.append("stop_string")
        else:
            completion_ids.append(head)
            reasons.append("eos" if eos_at is not None else "length")
    texts = [cut_at_stop(decode(ids), stops) for ids in completion_ids] if decode is not None else None
    return GenerationOutput(sequences, completion_ids, reasons, texts)


def _stop_end(ids: list[int], stops: tuple[str, ...], decode: Decoder | None) -> int | None:
    """The length of the shortest prefix of `ids` whose text holds a stop string, or None (no stop string)."""
    if not stops or decode is None or not any(s in decode(ids) for s in stops):
        return None
    return next((end for end in range(1, len(ids) + 1) if tail_has_stop(ids[:end], stops, decode)), len(ids))
