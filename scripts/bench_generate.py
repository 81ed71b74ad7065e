"""Benchmark HRM decoding with and without the KV cache against a layer-matched Llama (HF generate).

Prints tokens/s for each batch size: HRM without cache (full recompute per token), HRM with cache, and
transformers' LlamaForCausalLM with the same hidden size, heads and MLP width and as many layers as the
HRM evaluates per token (`llama_config_from_hrm(match="compute")`), using its own KV cache. Greedy decoding of exactly --new-tokens tokens.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from tqdm import tqdm
from transformers import LlamaForCausalLM

from hrm_codegen.models import HierarchicalReasoningModel_ACTV1, HRMConfig
from hrm_codegen.models.baseline import llama_config_from_hrm


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--num-heads", type=int, default=8)
    parser.add_argument("--layers", type=int, default=4, help="H_layers and L_layers of the HRM")
    parser.add_argument("--cycles", type=int, default=2, help="H_cycles and L_cycles of the HRM")
    parser.add_argument("--halt-max-steps", type=int, default=1)
    parser.add_argument("--vocab-size", type=int, default=50257)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batch-sizes", default="1,8", help="comma-separated")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per cell (the fastest is kept)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--no-full-recompute", action="store_true", help="skip the slow uncached HRM runs")
    parser.add_argument("--quick", action="store_true", help="small model and short sequences (a smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.hidden_size, args.num_heads, args.layers = 128, 4, 2
        args.vocab_size, args.prompt_len, args.new_tokens = 1024, 32, 32
    return args


def best_time(run: Callable[[], object], repeats: int) -> float:
    """Fastest wall time of `repeats` calls of `run`."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    """Build both models with random weights, time greedy generation and print the table."""
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
    hrm = HierarchicalReasoningModel_ACTV1(hrm_config).eval()
    llama_config = llama_config_from_hrm(hrm_config, match="compute")
    llama = LlamaForCausalLM(llama_config).eval()
    llama_layers, mlp_width = llama_config.num_hidden_layers, llama_config.intermediate_size
    print(
        f"HRM: hidden {args.hidden_size}, heads {args.num_heads}, H/L layers {args.layers}, cycles {args.cycles}, "
        f"halt_max_steps {args.halt_max_steps} = {llama_layers} block evaluations per token; "
        f"Llama: {llama_layers} layers, MLP width {mlp_width}; vocab {args.vocab_size}; "
        f"prompt {args.prompt_len}, new tokens {args.new_tokens}; torch threads {torch.get_num_threads()}"
    )

    runners: dict[str, Callable[[torch.Tensor, int], object]] = {
        "cache": lambda ids, new: hrm.generate(ids, max_new_tokens=new, use_cache=True),
        "llama": lambda ids, new: llama.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=0,
        ),
        "no cache": lambda ids, new: hrm.generate(ids, max_new_tokens=new, use_cache=False),
    }
    if args.no_full_recompute:
        del runners["no cache"]
    header = [
        "batch",
        "HRM no cache tok/s",
        "HRM cache tok/s",
        "Llama (HF) tok/s",
        "cache speed-up",
        "HRM/Llama",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header), flush=True)
    with torch.inference_mode():
        for run in runners.values():  # warm-up: first-call allocations and kernel selection
            run(torch.randint(0, args.vocab_size, (1, args.prompt_len)), 2)
        for batch in [int(b) for b in args.batch_sizes.split(",")]:
            ids = torch.randint(0, args.vocab_size, (batch, args.prompt_len))
            speed = {
                name: batch
                * args.new_tokens
                / best_time(lambda run=run, ids=ids: run(ids, args.new_tokens), args.repeats)
                for name, run in tqdm(runners.items(), desc=f"batch {batch}", leave=False)
            }
            full, cached, hf = speed.get("no cache"), speed["cache"], speed["llama"]
            cells = [
                str(batch),
                "-" if full is None else f"{full:.1f}",
                f"{cached:.1f}",
                f"{hf:.1f}",
                "-" if full is None else f"{cached / full:.2f}x",
                f"{cached / hf:.2f}x",
            ]
            print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
