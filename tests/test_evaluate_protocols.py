"""The evaluator's protocols end to end: stop strings on generated text only, auditable sample records,
--write-prompts without a model, EvalPlus files with their train-split overlap, --sanitize, refused flags."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import save_step
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from hrm_codegen.completions import ModelCompletions, SamplingConfig
from hrm_codegen.datasets.mbpp import load_mbpp, mbpp_problems
from hrm_codegen.datasets.protocols import FORMATS
from hrm_codegen.evaluation import evaluate, prompt_sha256
from hrm_codegen.execution import SandboxLimits
from hrm_codegen.families.hrm import HRM
from hrm_codegen.families.transformers_lm import TRANSFORMER
from hrm_codegen.models import HierarchicalReasoningModel_ACTV1
from hrm_codegen.tokenization import load_tokenizer

REPO = Path(__file__).resolve().parents[1]
EVALUATE = REPO / "scripts" / "evaluate.py"
BANG = "!"  # token 0 of GPT-2: what a model whose logits are all zero always picks


@pytest.fixture(scope="module")
def tokenizer(gpt2_dir):
    return load_tokenizer(gpt2_dir)


def _always_token_zero_llama(vocab_size: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=1024,
        )
    )
    with torch.no_grad():
        model.lm_head.weight.zero_()
    return model.eval()


def _always_token_zero_hrm(vocab_size: int, tiny_hrm_config: dict) -> HierarchicalReasoningModel_ACTV1:
    model = HierarchicalReasoningModel_ACTV1({**tiny_hrm_config, "vocab_size": vocab_size, "seq_len": 1024})
    with torch.no_grad():
        model.lm_head.weight.zero_()
    return model.eval()


@pytest.mark.parametrize("family_name", ["transformer", "hrm"])
def test_a_stop_string_completed_across_the_prompt_boundary_does_not_stop(
    tokenizer, mbpp_path, tiny_hrm_config, family_name, tmp_path
):
    """The prompt ends with a newline and the model's first token is "!": "\\n!" spans the boundary only."""
    problems = mbpp_problems(load_mbpp(mbpp_path), "test")[:2]
    assert all(p.prompt.endswith("\n") for p in problems)
    vocab = tokenizer.vocab_size
    family, model = (
        (TRANSFORMER, _always_token_zero_llama(vocab))
        if family_name == "transformer"
        else (HRM, _always_token_zero_hrm(vocab, tiny_hrm_config))
    )
    sampling = SamplingConfig(max_new_tokens=5, stop_strings=("\n" + BANG, "!!!!"), batch_size=2)
    source = ModelCompletions(model, tokenizer, sampling, progress=False, family=family)
    completions = source(problems, [[0], [0]])
    # Not stopped after one token by "\n!" (which only exists across the boundary); stopped by "!!!!" inside
    # the generated text after four tokens, and cut before it.
    assert completions == [[""], [""]]
    assert [r[0] for r in source.last_records] == [{"num_tokens": 4, "finish_reason": "stop_string"}] * 2

    summary = evaluate(
        problems,
        ModelCompletions(
            model, tokenizer, SamplingConfig(max_new_tokens=3, batch_size=2), progress=False, family=family
        ),
        num_samples=1,
        ks=[1],
        output_dir=tmp_path / "eval",
        limits=SandboxLimits(timeout_s=5),
        workers=2,
        progress=False,
    )
    records = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    by_task = {p.task_id: p for p in problems}
    for record in records:
        assert record["prompt_sha256"] == prompt_sha256(by_task[record["task_id"]].prompt)
        assert record["num_tokens"] == 3 and record["finish_reason"] == "length"
        assert record["completion"] == BANG * 3
    assert summary["length_capped_rate"] == 1.0


@pytest.mark.parametrize("project_tokenizer", [True, False])
def test_prompts_are_encoded_by_the_formats_bos_rule(tokenizer, gpt2_dir, project_tokenizer):
    """native puts training's BOS first (EOS where the tokenizer has none, GPT-2's case); the harness formats
    encode as the tokenizer does by default: none for GPT-2, a BOS for a tokenizer that adds one."""
    model, prompt = _always_token_zero_llama(tokenizer.vocab_size), "def add(a, b):\n"
    plain = AutoTokenizer.from_pretrained(gpt2_dir)
    chosen = tokenizer if project_tokenizer else plain
    text_ids = plain.encode(prompt, add_special_tokens=False)

    def encode(fmt: str, tok=chosen) -> list[int]:
        completions = ModelCompletions(model, tok, SamplingConfig(), progress=False, bos=FORMATS[fmt].bos)
        return completions.encode(prompt)

    assert encode("native") == [tokenizer.bos_id, *text_ids] and tokenizer.bos_id == plain.eos_token_id
    for fmt in ("bigcode", "lm-eval", "chat"):
        assert encode(fmt) == text_ids
    adds_bos = AutoTokenizer.from_pretrained(gpt2_dir, add_bos_token=True)
    assert encode("lm-eval", adds_bos) == [adds_bos.bos_token_id, *text_ids]
    with pytest.raises(ValueError, match="bos must be"):
        ModelCompletions(model, chosen, SamplingConfig(), progress=False, bos="sometimes")


def test_max_new_tokens_defaults_to_the_formats_and_the_command_line_wins(tmp_path):
    spec = importlib.util.spec_from_file_location("evaluate_defaults", EVALUATE)
    assert spec is not None and spec.loader is not None
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    common = ["--samples", str(tmp_path / "s.jsonl"), "--output", str(tmp_path / "out")]
    for fmt, dataset, expected in (
        ("lm-eval", "humaneval", 1024),
        ("lm-eval", "mbpp", 256),
        ("chat", "mbpp", 768),
    ):
        args = cli.parse_args([*common, "--prompt-format", fmt, "--dataset", dataset])
        assert args.max_new_tokens == expected
    assert (
        cli.parse_args([*common, "--prompt-format", "bigcode", "--max-new-tokens", "7"]).max_new_tokens == 7
    )


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(EVALUATE), *args], capture_output=True, text=True, cwd=REPO, timeout=300
    )


@pytest.mark.parametrize("fmt", ["native", "bigcode", "lm-eval"])
def test_write_prompts_writes_all_500_mbpp_test_prompts_without_a_model(mbpp_path, tmp_path, fmt):
    out = tmp_path / f"{fmt}.jsonl"
    done = _cli("--mbpp", str(mbpp_path), "--prompt-format", fmt, "--write-prompts", str(out))
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 500 and rows[0]["task_id"] == "11" and rows[-1]["task_id"] == "510"
    assert all(r["format"] == fmt and r["prompt"] and r["stop_sequences"] for r in rows)


def test_chat_prompts_need_a_tokenizer_and_flags_that_do_not_apply_are_refused(mbpp_path, tmp_path):
    cases = [
        (["--prompt-format", "chat", "--write-prompts", str(tmp_path / "p.jsonl")], "needs --tokenizer"),
        (["--dataset", "humaneval", "--few-shot", "2", "--samples", "x", "--output", "o"], "MBPP only"),
        (["--data-file", "x.jsonl", "--samples", "x", "--output", "o"], "--data-file is for"),
        (["--exclude-train-overlap", "--samples", "x", "--output", "o"], "mbppplus only"),
    ]
    for args, message in cases:
        done = _cli("--mbpp", str(mbpp_path), *args)
        assert done.returncode == 2 and message in done.stderr, (args, done.stderr)


def _mbppplus_file(path: Path) -> None:
    tasks = {
        2: ("similar_elements", "def similar_elements(a, b):\n    return tuple(set(a) & set(b))\n"),
        602: (
            "first_repeated_char",
            "def first_repeated_char(s):\n    return next((c for i, c in enumerate(s) if c in s[:i]), None)\n",
        ),
    }
    rows = []
    for task_id, (name, code) in tasks.items():
        rows.append(
            {
                "task_id": task_id,
                "prompt": f"Write a function {name}.",
                "code": code,
                "test_list": [f"assert {name} is not None"],
                "test_imports": [],
                "test": (
                    "assert set(similar_elements((1, 2), (2, 3))) == {2}\n"
                    if task_id == 2
                    else "assert first_repeated_char('abca') == 'a'\n"
                ),
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_mbppplus_file_evaluates_end_to_end_and_train_overlap_is_counted_and_excluded(mbpp_path, tmp_path):
    data = tmp_path / "mbppplus.jsonl"
    _mbppplus_file(data)
    samples = tmp_path / "samples.jsonl"
    good = {
        "2": "def similar_elements(a, b):\n    return tuple(set(a) & set(b))\n",
        "602": "def first_repeated_char(s):\n    return 'x'\n",
    }
    samples.write_text("".join(json.dumps({"task_id": t, "completion": c}) + "\n" for t, c in good.items()))
    common = [
        "--mbpp",
        str(mbpp_path),
        "--dataset",
        "mbppplus",
        "--data-file",
        str(data),
        "--samples",
        str(samples),
    ]
    done = _cli(*common, "--output", str(tmp_path / "all"))
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "all" / "summary.json").read_text())
    assert summary["num_problems"] == 2 and summary["pass_at_k"]["1"] == 0.5
    assert summary["config"]["train_overlap"] == 1 and summary["config"]["timeout"] == 30.0
    samples.write_text(json.dumps({"task_id": "2", "completion": good["2"]}) + "\n")  # 602 is excluded
    done = _cli(*common, "--exclude-train-overlap", "--output", str(tmp_path / "clean"))
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "clean" / "summary.json").read_text())
    assert summary["num_problems"] == 1 and summary["pass_at_k"]["1"] == 1.0


def test_sanitize_recovers_a_cut_off_tail(mbpp_path, tmp_path):
    problem = mbpp_problems(load_mbpp(mbpp_path), "test")[0]  # task 11: remove_Occ
    reference = problem.reference if problem.reference else load_mbpp(mbpp_path)[10]["code"]
    samples = tmp_path / "samples.jsonl"
    cut = reference.rstrip() + "\n\ndef helper(x):\n    return (x +"  # an unfinished tail after the answer
    samples.write_text(json.dumps({"task_id": problem.task_id, "completion": cut}) + "\n")
    scores = {}
    for flag in ([], ["--sanitize"]):
        out = tmp_path / ("sanitized" if flag else "raw")
        done = _cli(
            "--mbpp", str(mbpp_path), "--limit", "1", "--samples", str(samples), *flag, "--output", str(out)
        )
        assert done.returncode == 0, done.stderr
        summary = json.loads((out / "summary.json").read_text())
        scores[bool(flag)] = summary["pass_at_k"]["1"]
        assert summary["config"]["sanitize"] is bool(flag)
    assert scores == {False: 0.0, True: 1.0}


def test_quantize_int8_runs_end_to_end_through_evaluate(tmp_path, mbpp_path, gpt2_dir, tokenizer):
    from hrm_codegen.inference import build_model
    from hrm_codegen.train_config import compose_config

    cfg = compose_config(
        ["arch=tiny", "arch.hidden_size=32", "arch.seq_len=512", f"tokenizer.name_or_path={gpt2_dir}"]
    )
    torch.manual_seed(0)
    model = build_model(cfg, tokenizer.vocab_size)
    save_step(tmp_path / "run", 1, model, cfg, tokenizer)
    common = [
        "--ckpt",
        str(tmp_path / "run"),
        "--mbpp",
        str(mbpp_path),
        "--limit",
        "2",
        "--max-new-tokens",
        "4",
    ]
    done = _cli(*common, "--quantize", "int8", "--no-progress", "--output", str(tmp_path / "int8"))
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "int8" / "summary.json").read_text())
    assert summary["num_problems"] == 2 and summary["config"]["quantize"] == "int8"
    assert summary["config"]["prompt_bos"] == "always" and summary["config"]["max_new_tokens"] == 4
    records = [json.loads(x) for x in (tmp_path / "int8" / "samples.jsonl").read_text().splitlines()]
    assert all(r["num_tokens"] >= 1 for r in records)
    done = _cli(*common, "--no-progress", "--output", str(tmp_path / "int8"))  # fp32 into the int8 directory
    assert done.returncode == 2 and "quantize='int8'" in done.stderr
