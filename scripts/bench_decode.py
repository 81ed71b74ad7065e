"""Benchmark the real workload: greedy decoding of MBPP test prompts by a run of this launcher (the retrofitted HRM)
on every decoding path, against llama.cpp running the source model's GGUF on the same prompt ids and threads.

    python scripts/bench_decode.py --ckpt checkpoints/retrofit_L15x2_ft --problems 100 --threads 2 \
        --eval fp32=outputs/eval/L15x2_fp32 --eval int8_dynamic=outputs/eval/L15x2_int8d

Paths: eager (fp32, dynamic cache, finished rows leave the batch), compiled (static cache, torch.compile'd step),
int8_dynamic, int8 (weight-only), int4 (weight-only; on CPUs without AVX-512 the int4 values run in fp32), and
llama.cpp on the GGUF as shipped (Q4_1) and rewritten by llama.cpp's quantizer (Q8_0, F16). A path with the suffix
`+pld` (e.g. fp16+pld, llama.cpp-Q4_1+pld) decodes with prompt lookup (--lookup draft tokens: transformers'
prompt_lookup_num_tokens, llama-cpp-python's LlamaPromptLookupDecoding), one sequence at a time; the table's
footer says on how many problems its completions equal those of the path without the suffix. A path with the suffix
`+exit` (e.g. fp16+exit; an HRM trained with arch.exit_gate) decodes with per-token exits at --halt-threshold:
its layer evaluations per token are the mean of its one-token steps at batch 1, where every exit is a call not run
(the prompt runs every call), and the footer says on how many problems it wrote what the path without exits
wrote. `@KEY=VALUE` before a suffix overrides the checkpoint's arch at test time, as evaluate.py's --arch-override
does (e.g. fp16@L_cycles=1+pld: the HRM at one L cycle; its layer evaluations are counted). Each path runs in a
process of its own (its peak RSS is its own) on the first --problems MBPP test problems in the native prompt
format, max 128 new tokens, stopping where evaluate.py stops; every path decodes its own completions.

Printed per path: tokens/s at batch 1 and at --batch-size (prompts bucketed by length, as evaluate.py batches
them; llama.cpp through its Python binding decodes one sequence at a time), median and p90 seconds per problem
at batch 1, the 500-problem evaluation's wall time (measured by evaluate.py when --eval gives its output
directory for that path, else estimated from the batched seconds per problem, marked ~), peak RSS, layer
evaluations per token, and the ratio to llama.cpp (the --peer GGUF) in tokens/s and per layer evaluation.
The table goes to stdout and, with --out, to a markdown file beside a JSON log.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from hrm_codegen.completions import ModelCompletions, SamplingConfig
from hrm_codegen.datasets.mbpp import load_mbpp
from hrm_codegen.datasets.protocols import FORMATS, build_problems
from hrm_codegen.inference import load_checkpoint, parse_arch_overrides
from hrm_codegen.quantization import quantize_weights

TORCH_PATHS = ("eager", "compiled", "fp16", "int8_dynamic", "int8_smooth", "int8", "int4")
SUFFIXES = ("pld", "exit")  # +pld: prompt lookup decoding; +exit: per-token exits (an HRM's exit gate)
GGUF_KINDS = ("Q4_1", "Q8_0", "F16")
SOURCE_LAYERS = 30  # SmolLM2-135M's decoder layers: llama.cpp's layer evaluations per token


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ckpt", help="a run or step directory of this launcher (required unless --render)")
    parser.add_argument("--mbpp", default="data/mbpp/mbpp.jsonl")
    parser.add_argument("--problems", type=int, default=100, help="the first N MBPP test problems")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16, help="the evaluation's batch size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--paths", default=",".join(TORCH_PATHS + tuple(f"llama.cpp-{k}" for k in GGUF_KINDS))
    )
    parser.add_argument("--lookup", type=int, default=3, help="draft tokens of the +pld paths")
    parser.add_argument(
        "--halt-threshold",
        type=float,
        default=0.5,
        help="exit probability of the +exit paths (evaluate.py's)",
    )
    parser.add_argument("--source", default="smollm2-135m-instruct", help="registered source of the GGUF")
    parser.add_argument("--gguf-dir", default="sources/gguf", help="where the GGUFs are kept")
    parser.add_argument("--peer", default="llama.cpp-Q4_1", help="the path the ratios are taken against")
    parser.add_argument("--eval", action="append", default=[], metavar="PATH=DIR", help="evaluate.py output")
    parser.add_argument("--out", help="write the table (markdown) here and the per-path JSON beside it")
    parser.add_argument(
        "--render",
        help="print the table of a --out JSON again (its batch size and peer, with today's --eval; to --out when "
        "given), run nothing",
    )
    parser.add_argument("--path-timeout", type=float, default=1800, help="seconds one path may take")
    parser.add_argument("--one-path", help=argparse.SUPPRESS)  # internal: run one path, print JSON
    parser.add_argument("--prompt-file", help=argparse.SUPPRESS)  # internal: the prompt ids, for llama.cpp
    return parser.parse_args(argv)


def problems_and_ids(args: argparse.Namespace, loaded: Any) -> tuple[list[Any], ModelCompletions]:
    """The first --problems MBPP test problems (native prompts) and a completion source to encode them."""
    problems = build_problems("mbpp", load_mbpp(args.mbpp), "native", split="test")[: args.problems]
    sampling = SamplingConfig(
        max_new_tokens=args.max_new_tokens,
        batch_size=1,
        stop_strings=tuple(getattr(problems[0], "stop_sequences", ())),
    )
    source = ModelCompletions.from_loaded(loaded, sampling, progress=False, bos=FORMATS["native"].bos)
    return problems, source


def layer_evaluations(model: torch.nn.Module, ids: list[int]) -> int:
    """Decoder-layer calls in one forward of the prompt (the HRM's block, a transformers decoder layer)."""
    calls = 0

    def hook(*_: Any) -> None:
        nonlocal calls
        calls += 1

    blocks = [m for m in model.modules() if type(m).__name__.endswith(("DecoderLayer", "ACTV1Block"))]
    handles = [m.register_forward_hook(hook) for m in blocks]
    with torch.inference_mode():
        model(input_ids=torch.tensor([ids]))
    for handle in handles:
        handle.remove()
    return calls


def peak_rss_mb() -> float:
    """This process's peak resident memory (`VmHWM`: unlike `ru_maxrss`, which a process started by a larger parent
    inherits across exec, it belongs to this program alone)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def split_path(name: str) -> tuple[str, dict[str, Any] | None, str | None]:
    """(the decoding path, its arch overrides, its suffix: pld, exit or None) of a path name such as
    fp16@L_cycles=1+pld: each `@KEY=VALUE` is a test-time arch override of the checkpoint (evaluate.py's
    --arch-override), parsed as a YAML scalar."""
    head, _, suffix = name.partition("+")
    if suffix and suffix not in SUFFIXES:
        raise ValueError(
            f"path {name!r}: the suffixes are {', '.join('+' + s for s in SUFFIXES)} (one per path)"
        )
    base, *items = head.split("@")
    return base, parse_arch_overrides(items, f"path {name!r}: @KEY=VALUE"), suffix or None


def run_torch_path(args: argparse.Namespace, name: str) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    path, overrides, suffix = split_path(name)
    lookup, exits = suffix == "pld", suffix == "exit"
    if path not in TORCH_PATHS or (suffix and path == "compiled"):
        raise ValueError(f"unknown path {name!r}: {', '.join(TORCH_PATHS)}, each but compiled with a suffix")
    loaded = load_checkpoint(args.ckpt, device="cpu", arch_overrides=overrides)
    model: Any = loaded.model  # any family; +exit calls the HRM's set_exit_threshold / exit_summary
    if exits and not getattr(model.config, "exit_gate", False):
        raise ValueError(
            f"path {name!r}: {args.ckpt} has no exit gate (an HRM trained with arch.exit_gate=true)"
        )
    if path in ("fp16", "int8_dynamic", "int8_smooth", "int8", "int4"):
        quantize_weights(model, path, tokenizer=loaded.tokenizer)
    problems, source = problems_and_ids(args, loaded)
    layers = layer_evaluations(model, source.encode(problems[0].prompt)[:8])
    exit_summaries = {}
    if exits:
        model.set_exit_threshold(args.halt_threshold)
    if path == "compiled":
        source.options = {"compile": True}
    if lookup:
        source.options = {"prompt_lookup": args.lookup}
    # batch 1, problem by problem
    seconds, tokens, completions = [], [], []
    compile_seconds = None
    for index, problem in enumerate(problems):
        start = time.perf_counter()
        text = source([problem], [[0]])[0][0]
        elapsed = time.perf_counter() - start
        if path == "compiled" and index == 0:  # the first call compiles: timed apart, then run again
            compile_seconds = elapsed
            start = time.perf_counter()
            source([problem], [[0]])
            elapsed = time.perf_counter() - start
        seconds.append(elapsed)
        tokens.append(source.last_records[0][0]["num_tokens"])
        completions.append(text)
    if exits:  # what the one-token steps ran at batch 1, where every exit is a call not run
        exit_summaries["batch1"] = model.exit_summary()
        layers = exit_summaries["batch1"]["mean_layer_evals_per_token"] or layers
        model.set_exit_threshold(args.halt_threshold)  # counts the batched run apart
    result = {
        "path": name,
        "layers_per_token": layers,
        "batch1_seconds": seconds,
        "batch1_tokens": tokens,
        "batch1_completions": completions,
        "batch_tokens": None,
        "batch_seconds": None,
        "compile_seconds": compile_seconds,
        "int4_backend": model.__dict__.get("int4_backend"),
        "exit_summaries": exit_summaries or None,
    }
    if lookup:  # one sequence at a time: no batched run
        return {**result, "peak_rss_mb": peak_rss_mb()}
    # the evaluation's batch size, prompts bucketed by length as evaluate.py does
    batched = ModelCompletions(
        model,
        loaded.tokenizer,
        SamplingConfig(
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            stop_strings=source.sampling.stop_strings,
        ),
        progress=False,
        family=loaded.family,
        options=source.options,
        bos=source.bos,
    )
    ordered = sorted(problems, key=lambda p: -batched.prompt_length(p))
    batch_compile = None
    if path == "compiled":  # compile the batched shapes first (timed apart)
        start = time.perf_counter()
        batched(ordered[: args.batch_size], [[0]] * len(ordered[: args.batch_size]))
        batch_compile = time.perf_counter() - start
    start = time.perf_counter()
    batch_tokens = 0
    for first in range(0, len(ordered), args.batch_size):
        chunk = ordered[first : first + args.batch_size]
        batched(chunk, [[0]] * len(chunk))
        batch_tokens += sum(r[0]["num_tokens"] for r in batched.last_records)
    batch_seconds = time.perf_counter() - start
    if exits:
        exit_summaries["batched"] = model.exit_summary()
    return {
        **result,
        "batch_tokens": batch_tokens,
        "batch_seconds": batch_seconds,
        "batch_compile_seconds": batch_compile,
        "peak_rss_mb": peak_rss_mb(),
    }


def run_llama_path(args: argparse.Namespace, name: str) -> dict[str, Any]:
    from hrm_codegen.llamacpp import FTYPES, LlamaCppGreedy, llama_cpp, requantize_gguf
    from hrm_codegen.pretrained_sources import fetch_gguf

    kind, overrides, suffix = split_path(name)
    lookup = suffix == "pld"
    if suffix == "exit":
        raise ValueError(f"llama.cpp path {name!r}: +exit is for an HRM with an exit gate")
    if overrides:
        raise ValueError(f"llama.cpp path {name!r}: @KEY=VALUE arch overrides are for this launcher's runs")
    llama_cpp()  # the extra is there, before anything is downloaded
    if kind not in FTYPES:
        raise ValueError(f"llama.cpp path {kind!r}: the GGUF types are {', '.join(FTYPES)}")
    shipped = fetch_gguf(args.source, args.gguf_dir)
    gguf = (
        shipped
        if kind == "Q4_1"
        else requantize_gguf(shipped, Path(args.gguf_dir) / f"{shipped.stem}.{kind}.gguf", kind)
    )
    prompts = json.loads(Path(args.prompt_file).read_text())  # the model's prompt ids, written by the parent
    llm = LlamaCppGreedy(gguf, args.threads, prompt_lookup=args.lookup if lookup else 0)
    seconds, tokens, completions = [], [], []
    for ids in prompts["ids"]:
        out = llm(ids, args.max_new_tokens, prompts["stops"], llm.detokenize)
        seconds.append(out.seconds)
        tokens.append(len(out.ids))
        completions.append(out.ids)
    return {
        "path": f"llama.cpp-{name}",
        "batch1_completions": completions,
        "gguf": str(gguf),
        "gguf_mb": gguf.stat().st_size / 2**20,
        "layers_per_token": SOURCE_LAYERS,
        "batch1_seconds": seconds,
        "batch1_tokens": tokens,
        "batch_tokens": None,
        "batch_seconds": None,
        "peak_rss_mb": peak_rss_mb(),
    }


def measured_eval_minutes(directory: str) -> float:
    """Wall minutes of an evaluate.py run (generation + execution) from its summary.json."""
    summary = json.loads((Path(directory) / "summary.json").read_text())
    return (summary["generation_seconds"] + summary["execution_seconds"]) / 60


def pass_at_1(directory: str | None) -> str:
    """pass@1 of an evaluate.py run as "9.2% (46/500)", or "-"."""
    if directory is None:
        return "-"
    summary = json.loads((Path(directory) / "summary.json").read_text())
    value, problems = summary["pass_at_k"]["1"], summary["num_problems"]
    return f"{100 * value:.1f}% ({round(value * problems)}/{problems})"


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1] if len(values) > 1 else values[0]


def agreement(results: list[dict[str, Any]], suffix: str) -> list[str]:
    """For each path with `suffix` (pld, exit): on how many problems its completions equal those of the path
    without it (when both ran and recorded them)."""
    by_path = {r["path"]: r for r in results}
    lines = []
    for r in results:
        if not r["path"].endswith("+" + suffix):
            continue
        base = by_path.get(r["path"].removesuffix("+" + suffix))
        mine, theirs = r.get("batch1_completions"), base.get("batch1_completions") if base else None
        if base and mine and theirs:
            same = sum(a == b for a, b in zip(mine, theirs, strict=True))
            lines.append(f"{r['path']}: the completions of {base['path']} on {same}/{len(mine)} problems")
    return lines


def table(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """The markdown table: this run's speeds, and from the --eval runs their pass@1 and wall time."""
    evals = dict(item.rsplit("=", 1) for item in args.eval)  # a path's name may hold "=" (fp16@L_cycles=1)
    peer = next((r for r in results if r["path"] == args.peer), None)
    peer_tps = sum(peer["batch1_tokens"]) / sum(peer["batch1_seconds"]) if peer else None
    head = (
        f"| path | tok/s batch 1 | tok/s batch {args.batch_size} | s/problem median | s/problem p90 | "
        f"500 problems (min, est.) | peak RSS (MB) | layer evals/token | tok/s vs {args.peer} | "
        f"per layer evaluation vs {args.peer} | MBPP pass@1 (500) | evaluate.py run (min) |"
    )
    lines = [head, "|---|" + "---:|" * 11]
    for r in results:
        tps1 = sum(r["batch1_tokens"]) / sum(r["batch1_seconds"])
        tpsb = r["batch_tokens"] / r["batch_seconds"] if r["batch_seconds"] else None
        per_problem = (r["batch_seconds"] or sum(r["batch1_seconds"])) / len(r["batch1_seconds"])
        wall = f"~{per_problem * 500 / 60:.1f}"  # batched where the path batches, else batch 1
        measured = f"{measured_eval_minutes(evals[r['path']]):.1f}" if r["path"] in evals else "-"
        ratio = f"{tps1 / peer_tps:.2f}x" if peer_tps else "-"
        per_layer = (
            f"{tps1 * r['layers_per_token'] / (peer_tps * peer['layers_per_token']):.2f}x" if peer else "-"
        )
        lines.append(
            f"| {r['path']} | {tps1:.1f} | {'-' if tpsb is None else f'{tpsb:.1f}'} | "
            f"{statistics.median(r['batch1_seconds']):.2f} | {p90(r['batch1_seconds']):.2f} | {wall} | "
            f"{r['peak_rss_mb']:.0f} | {r['layers_per_token']:.4g} | {ratio} | {per_layer} | "
            f"{pass_at_1(evals.get(r['path']))} | {measured} |"
        )
    for suffix, title in (
        ("pld", "Prompt lookup"),
        ("exit", f"Per-token exits (threshold {args.halt_threshold})"),
    ):
        same = agreement(results, suffix)
        if same:
            lines += ["", f"{title}, same tokens: " + "; ".join(same) + "."]
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    if not args.ckpt and not args.render:
        raise SystemExit("bench_decode.py: error: --ckpt is required")
    if args.render:  # the table again from a run's JSON, with --eval directories finished since
        saved_path = Path(args.render)
        saved = json.loads(saved_path.read_text())
        markdown = saved_path.with_suffix(".md")
        header = saved.get("header") or (markdown.read_text().splitlines()[0] if markdown.is_file() else "")
        kept = ("batch_size", "peer", "halt_threshold")
        ran = argparse.Namespace(
            **{**vars(args), **{k: saved["args"][k] for k in kept if k in saved["args"]}}
        )
        text = header + "\n\n" + table(saved["results"], ran)
        if saved.get("skipped"):
            text += "\n\nNot measured: " + ", ".join(saved["skipped"])
        print(text)
        if args.out:
            Path(args.out).write_text(text + "\n")
        return
    if args.one_path:
        path = args.one_path
        result = (
            run_llama_path(args, path.split("-", 1)[1])
            if path.startswith("llama.cpp-")
            else run_torch_path(args, path)
        )
        print("RESULT " + json.dumps(result))
        return
    loaded = load_checkpoint(args.ckpt, device="cpu")
    problems, source = problems_and_ids(args, loaded)
    prompt_file = Path(tempfile.mkdtemp(prefix="bench_decode-")) / "prompts.json"
    ids = [source.encode(p.prompt) for p in problems]
    prompt_file.write_text(json.dumps({"ids": ids, "stops": list(source.sampling.stop_strings)}))
    del loaded, source
    results, skipped = [], []
    for path in args.paths.split(","):
        began = time.perf_counter()
        command = [
            sys.executable,
            __file__,
            *sys.argv[1:],
            "--one-path",
            path,
            "--prompt-file",
            str(prompt_file),
        ]
        try:
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                env={**os.environ, "OMP_NUM_THREADS": str(args.threads)},
                timeout=args.path_timeout,
            )
        except subprocess.TimeoutExpired:
            print(f"{path}: did not finish within --path-timeout {args.path_timeout} s", file=sys.stderr)
            skipped.append(f"{path} (over {args.path_timeout} s)")
            continue
        line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
        if done.returncode != 0 or line is None:
            print(
                f"{path}: failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}",
                file=sys.stderr,
            )
            skipped.append(f"{path} (failed)")
            continue
        result = json.loads(line[len("RESULT ") :])
        result["wall_seconds"] = time.perf_counter() - began
        results.append(result)
        print(
            f"{path}: {sum(result['batch1_tokens']) / sum(result['batch1_seconds']):.1f} tok/s at batch 1 "
            f"({result['wall_seconds']:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    header = (
        f"{datetime.date.today()} · {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
        f"({torch.backends.cpu.get_cpu_capability()}), torch {torch.__version__}, {args.threads} threads · "
        f"{args.ckpt} · first {args.problems} MBPP test problems, greedy, at most {args.max_new_tokens} new tokens"
    )
    text = header + "\n\n" + table(results, args)
    if skipped:
        text += "\n\nNot measured: " + ", ".join(skipped)
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        record = {"header": header, "args": vars(args), "results": results, "skipped": skipped}
        out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
