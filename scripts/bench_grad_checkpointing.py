"""Peak memory and time of one training forward + backward of the retrofitted 135M HRM, gradient checkpointing off
and on (`gradient_checkpointing_enable`: each level call keeps only its inputs and is recomputed in the backward).

The model is the checkpoint `--ckpt` (default checkpoints/retro_L15x2, SmolLM2-135M-Instruct retrofitted: L = layers
0-14 run twice behind gates, H = layers 15-29), or, when there is none, a random HRM of the same shape (hidden 576,
9 heads, 3 key/value heads, MLP 1536, vocabulary 49152, L 15 layers x 2 cycles, H 15 layers; full backpropagation,
bp_steps 0, as a retrofitted model trains). Each setting runs in its own process: it builds the model, then resets
the kernel's peak-RSS mark (/proc/self/clear_refs) and runs the step on random tokens; the table gives the resident
memory before the step (weights), the peak during it, the increase (activations, gradients, logits) and the step's
seconds. Without /proc/self/clear_refs the peak is the process's (ru_maxrss), building the model included. The
processes run with glibc's mmap threshold fixed (MALLOC_MMAP_THRESHOLD_, unless set): otherwise, once glibc has
raised it, freed tensors stay in the heap and the resident size counts memory that is no longer in use.

    python scripts/bench_grad_checkpointing.py
    python scripts/bench_grad_checkpointing.py --batch-size 2 --seq-len 512 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

DEFAULT_CKPT = Path(__file__).resolve().parents[1] / "checkpoints" / "retro_L15x2"
# SmolLM2-135M's shape as scripts/retrofit.py converts it with --l-layers 0:15 --h-layers 15:30 --L-cycles 2.
SMOLLM2_135M_L15X2 = {
    "vocab_size": 49152,
    "seq_len": 2048,
    "H_cycles": 1,
    "L_cycles": 2,
    "H_layers": 15,
    "L_layers": 15,
    "hidden_size": 576,
    "num_heads": 9,
    "num_key_value_heads": 3,
    "intermediate_size": 1536,
    "rms_norm_eps": 1e-5,
    "rope_theta": 100000.0,
    "norm_type": "pre",
    "final_norm": "head",
    "norm_weights": True,
    "scale_embeddings": False,
    "tie_word_embeddings": True,
    "zero_init_states": True,
    "recurrence_gates": True,
    "bp_steps": 0,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--ckpt", type=Path, default=DEFAULT_CKPT, help="a retrofitted run or step (default: %(default)s)"
    )
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    p.add_argument(
        "--child", choices=["off", "on"], help=argparse.SUPPRESS
    )  # one setting, in its own process
    return p.parse_args(argv)


def _memory_mib(field: str) -> float:
    """A field of /proc/self/status (VmRSS, VmHWM) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark of this process; False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def build_model(ckpt: Path) -> tuple[torch.nn.Module, str]:
    """The checkpoint's HRM, or a random one of the retrofitted SmolLM2-135M's shape; and where it came from."""
    if ckpt.exists():
        from hrm_codegen.inference import load_checkpoint

        return load_checkpoint(ckpt).model, str(ckpt)
    from hrm_codegen.models import HrmCodegenForCausalLM

    torch.manual_seed(0)
    return HrmCodegenForCausalLM(SMOLLM2_135M_L15X2), "random init, SmolLM2-135M shape (no checkpoint)"


def run_setting(args: argparse.Namespace) -> dict[str, Any]:
    """One forward + backward of the LM loss with checkpointing `args.child`; memory in MiB, time in seconds."""
    torch.set_num_threads(args.threads)
    model, source = build_model(args.ckpt)
    model.train()
    if args.child == "on":
        model.gradient_checkpointing_enable()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (args.batch_size, args.seq_len), generator=generator)
    before = _memory_mib("VmRSS")
    exact = _reset_peak()
    start = time.perf_counter()
    model(input_ids=ids, labels=ids).loss.backward()
    seconds = time.perf_counter() - start
    peak = _memory_mib("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    params = sum(p.numel() for p in model.parameters())
    return {
        "source": source,
        "params": params,
        "before": before,
        "peak": peak,
        "seconds": seconds,
        "exact": exact,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(run_setting(args)))
        return
    env = {"MALLOC_MMAP_THRESHOLD_": str(64 * 1024), **os.environ}
    results = {}
    for setting in ("off", "on"):
        command = [
            sys.executable,
            __file__,
            *(argv if argv is not None else sys.argv[1:]),
            "--child",
            setting,
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
        if done.returncode != 0:
            raise SystemExit(f"the {setting} run failed:\n{done.stderr[-3000:]}")
        results[setting] = json.loads(done.stdout.strip().splitlines()[-1])
    off, on = results["off"], results["on"]
    print(f"model: {off['source']} ({off['params'] / 1e6:.1f}M parameters)")
    print(
        f"one forward + backward, batch {args.batch_size} x {args.seq_len} tokens, {args.threads} thread(s)"
    )
    if not off["exact"]:
        print("(no /proc/self/clear_refs: peaks are the processes', building the model included)")
    print(f"{'checkpointing':<14}{'RSS before MiB':>16}{'peak MiB':>10}{'increase MiB':>14}{'seconds':>9}")
    for setting, row in results.items():
        increase = row["peak"] - row["before"]
        print(
            f"{setting:<14}{row['before']:>16.0f}{row['peak']:>10.0f}{increase:>14.0f}{row['seconds']:>9.1f}"
        )
    print(
        f"on / off: peak {on['peak'] / off['peak']:.2f}x, increase "
        f"{(on['peak'] - on['before']) / (off['peak'] - off['before']):.2f}x, time {on['seconds'] / off['seconds']:.2f}x"
    )


if __name__ == "__main__":
    main()
