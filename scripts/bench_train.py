"""Training throughput of the HRM, HRM-Text and the two Llama baselines on the same batch, raw and FLOP-normalised.

Each step is forward + cross-entropy + backward + AdamW. The models take turns step by step (so a change in
machine load hits all of them alike) and the median step time counts. Achieved FLOP/s uses the analytic
FLOPs of `hrm_codegen.flops`, where the no-grad layer evaluations (the HRM's, and HRM-Text's L cycles outside
`--L-bp-cycles`) count as forward only. HRM-Text (transformers' HrmTextForCausalLM) gets the HRM's width, heads,
MLP size, cycles and layers per stack (`--H-layers`), with PrefixLM off (the batch has no prompt).

    python scripts/bench_train.py --quick
    python scripts/bench_train.py --hidden-size 512 --seq-len 256 --batch-size 4 --steps 6 --profile
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import HrmTextForCausalLM

from hrm_codegen.families.hrm_text import hrm_text_config
from hrm_codegen.flops import hrm_flops_per_token, hrm_text_flops_per_token, llama_flops_per_token
from hrm_codegen.models import HierarchicalReasoningModel_ACTV1, HRMConfig
from hrm_codegen.models.baseline import build_baseline

QUICK = {
    "hidden_size": 128,
    "num_heads": 4,
    "seq_len": 128,
    "batch_size": 2,
    "steps": 4,
    "warmup": 1,
    "vocab_size": 8192,
}


@dataclass
class Contender:
    """A model under test: how to get logits from input ids, and its analytic training FLOPs per token."""

    name: str
    model: torch.nn.Module
    logits: Callable[[torch.Tensor], torch.Tensor]
    flops_per_token: float
    layers: int
    step_times: list[float]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags (sizes, steps, device)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"small sizes for a smoke run: {QUICK}")
    p.add_argument("--hidden-size", type=int, default=512)
    p.add_argument("--num-heads", type=int, default=8)
    p.add_argument("--expansion", type=float, default=4.0)
    p.add_argument("--H-cycles", type=int, default=2)
    p.add_argument("--L-cycles", type=int, default=2)
    p.add_argument("--H-layers", type=int, default=4)
    p.add_argument("--L-layers", type=int, default=4)
    p.add_argument(
        "--L-bp-cycles",
        type=int,
        nargs="+",
        default=[2],
        help="HRM-Text: per H cycle, the trailing L cycles with gradients (left-padded with 1)",
    )
    p.add_argument("--no-hrm-text", action="store_true", help="leave HRM-Text out")
    p.add_argument("--vocab-size", type=int, default=50257)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=6, help="timed steps per model")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per model first")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default=None,
        help="forward dtype (default: bfloat16 on CUDA, float32 on CPU)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--profile", action="store_true", help="print the top operators of one step per model")
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile each model (nn.Module.compile); compile time reported",
    )
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            if getattr(args, key) == p.get_default(key):
                setattr(args, key, value)
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    return args


def build_contenders(args: argparse.Namespace) -> list[Contender]:
    """The HRM, HRM-Text, the parameter-matched and the compute-matched Llama, on the chosen device."""
    hrm_dict = HRMConfig(
        vocab_size=args.vocab_size,
        seq_len=args.seq_len,
        H_cycles=args.H_cycles,
        L_cycles=args.L_cycles,
        H_layers=args.H_layers,
        L_layers=args.L_layers,
        hidden_size=args.hidden_size,
        expansion=args.expansion,
        num_heads=args.num_heads,
        forward_dtype=args.dtype,
        attn_backend="sdpa",
    ).arch_dict()
    hrm = HierarchicalReasoningModel_ACTV1(hrm_dict).to(args.device)
    contenders = [
        Contender(
            "hrm",
            hrm,
            hrm.lm_forward,
            hrm_flops_per_token(hrm.config)["total"],
            hrm.config.layer_evals_per_segment,
            [],
        )
    ]
    autocast = args.dtype != "float32"

    def autocasting(device: torch.device) -> contextlib.AbstractContextManager:
        return (
            torch.autocast(device.type, dtype=getattr(torch, args.dtype))
            if autocast
            else contextlib.nullcontext()
        )

    if not args.no_hrm_text:
        text_config = hrm_text_config(
            {
                "vocab_size": args.vocab_size,
                "seq_len": args.seq_len,
                "hidden_size": args.hidden_size,
                "num_heads": args.num_heads,
                "expansion": args.expansion,
                "num_layers_per_stack": args.H_layers,
                "H_cycles": args.H_cycles,
                "L_cycles": args.L_cycles,
                "L_bp_cycles": args.L_bp_cycles,
                "prefix_lm": False,
                "attn_backend": "sdpa",
            }
        )
        hrm_text = HrmTextForCausalLM(text_config).to(args.device)

        def text_logits(ids: torch.Tensor, model=hrm_text) -> torch.Tensor:
            with autocasting(ids.device):
                return model(input_ids=ids, use_cache=False).logits

        evals = text_config.H_cycles * (text_config.L_cycles + 1) * (text_config.num_layers_per_stack or 1)
        flops = hrm_text_flops_per_token(text_config, args.seq_len)["total"]
        contenders.append(Contender("hrm-text", hrm_text, text_logits, flops, evals, []))
    for match in ("params", "compute"):
        llama = build_baseline({**hrm_dict, "match": match}).to(args.device)

        def logits(ids: torch.Tensor, llama=llama) -> torch.Tensor:
            context = (
                torch.autocast(ids.device.type, dtype=getattr(torch, args.dtype))
                if autocast
                else contextlib.nullcontext()
            )
            with context:
                return llama(input_ids=ids, use_cache=False).logits

        contenders.append(
            Contender(
                f"llama-{match}",
                llama,
                logits,
                llama_flops_per_token(llama.config, args.seq_len)["total"],
                llama.config.num_hidden_layers,
                [],
            )
        )
    return contenders


def make_step(contender: Contender, batch: torch.Tensor, labels: torch.Tensor) -> Callable[[], None]:
    """One training step (forward, loss, backward, AdamW) for `contender`."""
    optimizer = torch.optim.AdamW(contender.model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    contender.model.train()

    def step() -> None:
        logits = contender.logits(batch)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def synchronize(device: str) -> None:
    """Wait for queued GPU work so that wall-clock times are complete."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def profile_step(name: str, step: Callable[[], None]) -> None:
    """Print the operators that take the most self time in one step."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    print(f"\n== profile: {name} ==")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def matmul_peak(device: str, dtype: torch.dtype, size: int = 4096, repeats: int = 10) -> float:
    """The device's measured dense matmul throughput (FLOP/s) at `dtype`: the MFU denominator, not a datasheet."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # warm-up
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2.0 * size**3 * repeats / (time.perf_counter() - start)


def report(contenders: list[Contender], tokens_per_step: int, peak: float | None = None) -> None:
    """Print the throughput table with FLOP/s ratios against both Llama baselines (and MFU against `peak`)."""
    achieved = {}
    for c in contenders:
        seconds = statistics.median(c.step_times)
        achieved[c.name] = (tokens_per_step / seconds, c.flops_per_token * tokens_per_step / seconds)
    ref_compute, ref_params = achieved["llama-compute"][1], achieved["llama-params"][1]
    header = (
        f"{'model':<15}{'params':>10}{'layers':>8}{'tokens/s':>11}{'GFLOP/tok':>11}{'GFLOP/s':>10}"
        f"{'vs compute':>12}{'vs params':>11}" + (f"{'MFU':>8}" if peak else "")
    )
    print(header)
    print("-" * len(header))
    for c in contenders:
        tokens_s, flops_s = achieved[c.name]
        params = sum(p.numel() for p in c.model.parameters()) / 1e6
        print(
            f"{c.name:<15}{params:>9.2f}M{c.layers:>8}{tokens_s:>11.1f}{c.flops_per_token / 1e9:>11.3f}"
            f"{flops_s / 1e9:>10.2f}{flops_s / ref_compute:>11.2f}x{flops_s / ref_params:>10.2f}x"
            + (f"{flops_s / peak:>7.1%}" if peak else "")
        )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    try:
        contenders = build_contenders(args)
    except ValueError as err:
        sys.exit(f"error: {err}")
    batch = torch.randint(0, args.vocab_size, (args.batch_size, args.seq_len), device=args.device)
    labels = torch.roll(batch, -1, dims=1)
    if args.compile:
        for contender in contenders:
            contender.model.compile()
    steps = [make_step(c, batch, labels) for c in contenders]
    print(
        f"device={args.device} dtype={args.dtype} threads={torch.get_num_threads()} "
        f"batch={args.batch_size}x{args.seq_len} hidden={args.hidden_size} vocab={args.vocab_size}"
    )
    with tqdm(total=len(steps) * (args.warmup + args.steps), desc="steps", unit="step", leave=False) as bar:
        compile_s = {}
        for contender, step in zip(contenders, steps, strict=True):
            for i in range(args.warmup):
                start = time.perf_counter()
                step()
                synchronize(args.device)
                if i == 0:
                    compile_s[contender.name] = time.perf_counter() - start
                bar.update()
        for _ in range(args.steps):
            for contender, step in zip(contenders, steps, strict=True):
                synchronize(args.device)
                start = time.perf_counter()
                step()
                synchronize(args.device)
                contender.step_times.append(time.perf_counter() - start)
                bar.update()
    if args.compile:
        print("first step (compile included): " + ", ".join(f"{k} {v:.1f} s" for k, v in compile_s.items()))
    peak_dtype = getattr(torch, args.dtype) if args.dtype != "float32" else torch.float32
    peak = matmul_peak(args.device, peak_dtype)
    print(f"measured {args.dtype} matmul peak: {peak / 1e12:.2f} TFLOP/s (the MFU denominator)")
    report(contenders, args.batch_size * args.seq_len, peak)
    if args.profile:
        for contender, step in zip(contenders, steps, strict=True):
            profile_step(contender.name, step)
    return 0


if __name__ == "__main__":
    sys.exit(main())
