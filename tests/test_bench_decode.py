"""scripts/bench_decode.py end to end on a tiny HRM checkpoint (torch paths only: llama.cpp is an optional extra)."""

import json
import subprocess
import sys
from pathlib import Path

import torch
from conftest import save_step

from hrm_codegen.models import HierarchicalReasoningModel_ACTV1
from hrm_codegen.tokenization import load_tokenizer

REPO = Path(__file__).resolve().parents[1]


def test_bench_decode_prints_every_path_with_its_pass_at_1(tmp_path, gpt2_dir, mbpp_path, tiny_hrm_config):
    tokenizer = load_tokenizer(gpt2_dir)
    arch = {**tiny_hrm_config, "vocab_size": tokenizer.vocab_size, "seq_len": 1024, "exit_gate": True}
    torch.manual_seed(0)
    model = HierarchicalReasoningModel_ACTV1(arch).eval()
    with torch.no_grad():  # a gate that sends some tokens out early, not all
        model.model.exit_head.weight.normal_(0.0, 1.0)
    run_dir = tmp_path / "run"
    save_step(run_dir, 1, model, {"arch": {"name": "hrm", **arch}}, tokenizer)
    evaluation = (
        tmp_path / "eval"
    )  # an evaluate.py output: its summary gives the pass@1 and the 500-problem time
    evaluation.mkdir()
    summary = {
        "num_problems": 500,
        "pass_at_k": {"1": 0.092},
        "generation_seconds": 420.0,
        "execution_seconds": 60.0,
    }
    (evaluation / "summary.json").write_text(json.dumps(summary))
    out = tmp_path / "bench.md"
    command = [
        sys.executable,
        str(REPO / "scripts/bench_decode.py"),
        "--ckpt",
        str(run_dir),
        "--mbpp",
        str(mbpp_path),
    ]
    command += ["--problems", "3", "--max-new-tokens", "4", "--batch-size", "2", "--threads", "1"]
    command += [
        "--paths",
        "eager,eager+pld,eager+exit,int8_dynamic,eager@L_cycles=1,eager@L_cycles,llama.cpp-nope",
        "--peer",
        "eager",
        "--eval",
        f"eager={evaluation}",
        "--eval",
        f"eager@L_cycles=1={evaluation}",
    ]
    done = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    table = out.read_text()
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert {"eager", "eager+pld", "eager+exit", "int8_dynamic", "eager@L_cycles=1"} <= set(rows)
    assert "eager+pld: the completions of eager on 3/3 problems" in table
    assert "Per-token exits (threshold 0.5), same tokens: eager+exit: the completions of eager on" in table
    assert "| 9.2% (46/500) | 8.0 |" in rows["eager"]  # pass@1 and the evaluate.py run's minutes
    assert "| 1.00x | 1.00x |" in rows["eager"]  # the peer against itself, in tokens and per layer evaluation
    assert "Not measured: eager@L_cycles (failed), llama.cpp-nope (failed)" in table
    assert "path 'eager@L_cycles': @KEY=VALUE takes KEY=VALUE" in done.stderr
    assert "| 9.2% (46/500) | 8.0 |" in rows["eager@L_cycles=1"]  # --eval of a path whose name holds "="
    results = json.loads(out.with_suffix(".json").read_text())["results"]
    assert all(len(r["batch1_seconds"]) == 3 and r["layers_per_token"] > 0 for r in results)
    by_path = {r["path"]: r for r in results}
    assert by_path["eager"]["layers_per_token"] == 6  # 2 H cycles x (2 L calls + 1 H call), one layer each
    assert by_path["eager@L_cycles=1"]["layers_per_token"] == 4  # the test-time override: 2 x (1 + 1)
    exits = by_path["eager+exit"]["exit_summaries"]["batch1"]
    # the one-token steps' mean at batch 1: some tokens left early, and each exit was a call not run
    assert 2 <= by_path["eager+exit"]["layers_per_token"] == exits["mean_layer_evals_per_token"] < 6
    assert exits["skipped_layer_evals"] > 0

    # --render: the saved run's table again (its batch size and peer, not the command line's), to --out
    again = tmp_path / "again.md"
    render = [
        sys.executable,
        str(REPO / "scripts/bench_decode.py"),
        "--render",
        str(out.with_suffix(".json")),
    ]
    render += [
        "--batch-size",
        "7",
        "--peer",
        "int8_dynamic",
        "--eval",
        f"eager={evaluation}",
        "--eval",
        f"eager@L_cycles=1={evaluation}",
        "--out",
        str(again),
    ]
    done = subprocess.run(render, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert again.read_text() == table
