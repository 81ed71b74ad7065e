"""Benchmark decoding on the CPU: the HRM vs a compute-matched Llama (and HRM-Text when the `hrm_text` family is
registered), every model through the same path, `hrm_codegen.generation.generate` (transformers' generate):
dynamic cache ("eager"), static cache, static cache + torch.compile, int8 weights (dynamic cache).

For each model and batch size it prints tokens/s, the process's peak resident memory so far, the weight bytes
read per generated token (linear-layer weights times their calls per step, over the batch), the bandwidth
ceiling (those bytes at the memory bandwidth measured in the same run by a large tensor copy), the share of
that ceiling the static cache reaches, and the compile time (the first compiled call's wall time, compilation
included), then each model's speed over the Llama's path by path. The models take turns cell by cell (warm-up,
then the timed repeats), so a change in the machine's load hits them alike. Then the cache speed-up over full recomputation on a small HRM (hidden 256, 2+2 layers, 2x2 cycles).
Greedy decoding of exactly --new-tokens tokens (EOS disabled) from random prompts, random weights.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import platform
import resource
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import LlamaForCausalLM

from hrm_codegen.families import FAMILIES
from hrm_codegen.generation import generate
from hrm_codegen.models import HierarchicalReasoningModel_ACTV1, HRMConfig
from hrm_codegen.models.baseline import llama_config_from_hrm
from hrm_codegen.models.layers import CastedLinear
from hrm_codegen.quantization import METHODS, quantize_weights


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hidden-size", type=int, default=512, help="the HRM (default: arch/hrm_v1)")
    parser.add_argument("--num-heads", type=int, default=8)
    parser.add_argument("--layers", type=int, default=4, help="H_layers and L_layers of the HRM")
    parser.add_argument("--cycles", type=int, default=2, help="H_cycles and L_cycles of the HRM")
    parser.add_argument("--halt-max-steps", type=int, default=1)
    parser.add_argument("--vocab-size", type=int, default=50257)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batch-sizes", default="1,8", help="comma-separated")
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="timed runs per cell, the models taking turns (the fastest is kept)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--quant", default="int8_dynamic", choices=METHODS, help="the int8 column's method")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled columns")
    parser.add_argument("--no-llama", action="store_true")
    parser.add_argument(
        "--no-hrm-text", action="store_true", help="skip HRM-Text even when its family is there"
    )
    parser.add_argument(
        "--small-new-tokens", type=int, default=32, help="tokens of the small-HRM speed-up run"
    )
    return parser.parse_args()


def best_time(run: Callable[[], object], repeats: int) -> float:
    """Fastest wall time of `repeats` calls of `run`."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def memory_bandwidth(megabytes: int = 512, repeats: int = 5) -> float:
    """Bytes per second of a large tensor copy (read + write), the best of `repeats`."""
    src = torch.ones(megabytes * 2**20 // 4)
    dst = torch.empty_like(src)
    seconds = best_time(lambda: dst.copy_(src), repeats)
    return 2 * src.numel() * 4 / seconds


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def weight_bytes_per_step(model: nn.Module, forward: Callable[[], object]) -> int:
    """Linear-layer weight bytes one forward reads: each call of a layer reads its weight once."""
    total = 0

    def hook(module: nn.Module, *_: Any) -> None:
        nonlocal total
        total += module.weight.numel() * module.weight.element_size()

    handles = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Linear | CastedLinear)
    ]
    with torch.inference_mode():
        forward()
    for h in handles:
        h.remove()
    return total


def runner(model: nn.Module, **kw: Any) -> Callable[[torch.Tensor, int], object]:
    """Greedy decoding of exactly `new` tokens (no EOS) through the project's one decoding path."""
    model.generation_config.eos_token_id = None  # type: ignore[union-attr]

    def run(ids: torch.Tensor, new: int) -> object:
        return generate(model, ids, max_new_tokens=new, pad_token_id=0, **kw)

    return run


PATHS = ("eager", "static", "compiled", "int8")


def runners_for(model: nn.Module, args) -> dict[str, Callable[[torch.Tensor, int], object]]:
    """The decoding paths of one model: dynamic cache, static cache, static cache + compile, int8 weights."""
    quantized = quantize_weights(copy.deepcopy(model), args.quant)
    runners = {
        "eager": runner(model, cache_implementation="dynamic"),
        "static": runner(model, cache_implementation="static"),
        "compiled": runner(model, compile=True),
        "int8": runner(quantized, cache_implementation="dynamic"),
    }
    if args.no_compile:
        del runners["compiled"]
    return runners


def bench_batch(
    models: dict[str, dict[str, Callable[[torch.Tensor, int], object]]], batch: int, args
) -> tuple[dict[str, dict[str, list[float]]], dict[str, float]]:
    """Wall times of every (model, path) at one batch size, one per repeat, and each model's compile time.

    The models take turns: for each path, every model is warmed up once at the timed length (for "compiled",
    that call compiles, over the static cache the timed calls reuse), then each repeat times every model once
    in turn, so a change in the machine's load hits the peers alike and repeat r of two models is a pair.
    """
    ids = torch.randint(0, args.vocab_size, (batch, args.prompt_len))
    times: dict[str, dict[str, list[float]]] = {name: {} for name in models}
    compile_s: dict[str, float] = {}
    with torch.inference_mode():
        for key in PATHS:
            live = [name for name in models if key in models[name]]
            for name in list(live):
                try:
                    start = time.perf_counter()
                    models[name][key](ids, args.new_tokens)
                    if key == "compiled":
                        compile_s[name] = time.perf_counter() - start
                except Exception as err:  # noqa: BLE001 - a cell that cannot run is reported, not fatal
                    print(f"  ({name} {key} batch {batch} failed: {type(err).__name__}: {str(err)[:120]})")
                    live.remove(name)
            for _ in range(args.repeats):
                for name in live:
                    start = time.perf_counter()
                    models[name][key](ids, args.new_tokens)
                    times[name].setdefault(key, []).append(time.perf_counter() - start)
    return times, compile_s


def tokens_per_s(times: dict[str, dict[str, list[float]]], batch: int, new_tokens: int):
    """The fastest repeat of every (model, path) as tokens/s."""
    return {name: {k: batch * new_tokens / min(t) for k, t in paths.items()} for name, paths in times.items()}


def print_rows(
    names: list[str], batch: int, speed, compile_s, step_bytes: dict[str, int], bandwidth: float
) -> None:
    """One table row per model at one batch size."""
    for name in names:
        per_token = step_bytes[name] / batch
        ceiling = bandwidth / per_token
        cells = [name, str(batch)] + [f"{speed[name][k]:.1f}" if k in speed[name] else "-" for k in PATHS]
        best = max(speed[name].get("static", 0), speed[name].get("compiled", 0))
        cells += [
            f"{peak_rss_mb():.0f}",
            f"{per_token / 1e6:.1f}",
            f"{ceiling:.1f}",
            f"{best / ceiling:.0%}",
            f"{compile_s[name]:.1f}" if name in compile_s else "-",
        ]
        print("| " + " | ".join(cells) + " |", flush=True)


def ratio_cell(mine: list[float], theirs: list[float]) -> str:
    """Speed over the peer's: the ratio of the fastest times, then the range of the repeats' paired ratios
    (repeat r of both models ran back to back), which shows how much of a difference is noise."""
    pairs = [t / m for m, t in zip(mine, theirs, strict=True)]
    spread = f" ({min(pairs):.2f}-{max(pairs):.2f})" if len(pairs) > 1 else ""
    return f"{min(theirs) / min(mine):.2f}x{spread}"


def print_ratios(peer: str, times: dict[int, dict[str, dict[str, list[float]]]]) -> None:
    """Each model's speed over the peer's, path by path, at every batch size (measured in the same turns)."""
    print(
        f"\nspeed / {peer} (same path, same batch; > 1 = faster than the peer; in brackets the range of the "
        "paired repeats' ratios)"
    )
    print("| model | batch | " + " | ".join(PATHS) + " |\n|---|---|" + "---|" * len(PATHS))
    for batch, paths in times.items():
        for name in paths:
            if name == peer:
                continue
            cells = [
                ratio_cell(paths[name][k], paths[peer][k]) if k in paths[name] and k in paths[peer] else "-"
                for k in PATHS
            ]
            print(f"| {name} | {batch} | " + " | ".join(cells) + " |")
    print(flush=True)


def main() -> None:
    """Build the models with random weights, time greedy generation and print the tables."""
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    hrm_config = HRMConfig(
        vocab_size=args.vocab_size,
        seq_len=args.prompt_len + args.new_tokens,
        H_cycles=args.cycles,
        L_cycles=args.cycles,
        H_layers=args.layers,
        L_layers=args.layers,
        hidden_size=args.hidden_size,
        num_heads=args.num_heads,
        halt_max_steps=args.halt_max_steps,
    )
    bandwidth = memory_bandwidth()
    print(
        f"{datetime.date.today()}, {platform.machine()} CPU, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; copy bandwidth {bandwidth / 1e9:.1f} GB/s. HRM: hidden "
        f"{args.hidden_size}, H/L layers {args.layers}, cycles {args.cycles}, halt_max_steps "
        f"{args.halt_max_steps}; vocab {args.vocab_size}; prompt {args.prompt_len}, new tokens {args.new_tokens}; "
        f"int8 = {args.quant}"
    )
    header = [
        "model",
        "batch",
        "eager tok/s",
        "static tok/s",
        "static+compiled tok/s",
        f"{args.quant} tok/s",
        "peak RSS MB",
        "weight MB/token",
        "ceiling tok/s",
        "best/ceiling",
        "compile s",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header), flush=True)
    models: list[tuple[str, nn.Module]] = [
        ("HRM hrm_v1", HierarchicalReasoningModel_ACTV1(hrm_config).eval())
    ]
    peer = None
    if not args.no_llama:
        llama = LlamaForCausalLM(llama_config_from_hrm(hrm_config, match="compute")).eval()
        peer = f"Llama {llama.config.num_hidden_layers}L (compute-matched)"
        models.append((peer, llama))
    if "hrm_text" in FAMILIES and not args.no_hrm_text:
        try:
            text_config = {
                "vocab_size": args.vocab_size,
                "seq_len": args.prompt_len + args.new_tokens,
                "H_cycles": args.cycles,
                "L_cycles": args.cycles,
                "hidden_size": args.hidden_size,
                "num_heads": args.num_heads,
                "num_layers_per_stack": args.layers,
            }
            models.append(("HRM-Text", FAMILIES["hrm_text"].build(text_config).eval()))
        except Exception as err:  # noqa: BLE001
            print(f"(HRM-Text not benchmarked: {type(err).__name__}: {err})")
    one = torch.randint(0, args.vocab_size, (1, 1))
    step_bytes = {
        name: weight_bytes_per_step(model, lambda m=model: m(input_ids=one, logits_to_keep=1))
        for name, model in models
    }
    runners = {name: runners_for(model, args) for name, model in models}
    times = {}
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        times[batch], compile_s = bench_batch(runners, batch, args)
        speed = tokens_per_s(times[batch], batch, args.new_tokens)
        print_rows(list(runners), batch, speed, compile_s, step_bytes, bandwidth)
    if peer is not None:
        print_ratios(peer, times)
    del models, runners

    small = HierarchicalReasoningModel_ACTV1(
        HRMConfig(
            vocab_size=args.vocab_size,
            seq_len=args.prompt_len + args.small_new_tokens,
            hidden_size=256,
            num_heads=4,
            H_layers=2,
            L_layers=2,
            H_cycles=2,
            L_cycles=2,
        )
    ).eval()
    print("\nsmall HRM (hidden 256, 2+2 layers, 2x2 cycles): dynamic cache vs full recomputation")
    print("| batch | full recompute tok/s | cache tok/s | speed-up |\n|---|---|---|---|")
    with torch.inference_mode():
        for batch in [int(b) for b in args.batch_sizes.split(",")]:
            ids = torch.randint(0, args.vocab_size, (batch, args.prompt_len))
            n = args.small_new_tokens
            full = (
                batch
                * n
                / best_time(
                    lambda ids=ids, n=n: generate(small, ids, max_new_tokens=n, use_cache=False), args.repeats
                )
            )
            cached = (
                batch
                * n
                / best_time(lambda ids=ids, n=n: generate(small, ids, max_new_tokens=n), args.repeats)
            )
            print(f"| {batch} | {full:.1f} | {cached:.1f} | {cached / full:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
