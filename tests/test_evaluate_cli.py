"""scripts/evaluate.py end to end (samples file, HRM checkpoint, transformers model) and its completion source."""

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import save_step

from hrm_codegen.completions import ModelCompletions, SamplingConfig, sample_seed
from hrm_codegen.datasets.humaneval import humaneval_problems
from hrm_codegen.datasets.mbpp import MBPP_STOP_STRINGS, load_mbpp, mbpp_problems
from hrm_codegen.families.hrm import HRM
from hrm_codegen.generation import cut_at_stop, generate
from hrm_codegen.inference import load_pretrained
from hrm_codegen.models import HierarchicalReasoningModel_ACTV1
from hrm_codegen.tokenization import load_tokenizer

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "evaluate.py"


def run_cli(*args: str | Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--no-progress", "--workers", "2", *map(str, args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def problems(mbpp_path):
    return mbpp_problems(load_mbpp(mbpp_path), "test")[:3]


@pytest.fixture(scope="module")
def tokenizer(gpt2_dir):
    return load_tokenizer(gpt2_dir)


def tiny_hrm(tokenizer, tiny_hrm_config, **overrides) -> tuple[HierarchicalReasoningModel_ACTV1, dict]:
    arch = {**tiny_hrm_config, "vocab_size": tokenizer.vocab_size, "seq_len": 256, **overrides}
    torch.manual_seed(0)
    return HierarchicalReasoningModel_ACTV1(arch).eval(), arch


@pytest.mark.parametrize(
    ("dataset", "completion", "expected"),
    [("mbpp", "reference", 1.0), ("mbpp", "empty", 0.0), ("humaneval", "reference", 1.0)],
)
def test_samples_file_is_scored(tmp_path, mbpp_path, problems, dataset, completion, expected):
    chosen = problems if dataset == "mbpp" else humaneval_problems()[:3]
    samples = tmp_path / "samples_in.jsonl"
    lines = [
        {"task_id": p.task_id, "completion": p.reference if completion == "reference" else ""} for p in chosen
    ]
    samples.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "eval"
    result = run_cli(
        "--samples", samples, "--dataset", dataset, "--mbpp", mbpp_path, "--limit", 3, "--output", out
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pass_at_k"]["1"] == expected
    assert summary["num_problems"] == 3
    assert [r["passed"] for r in read_jsonl(out / "samples.jsonl")] == [expected == 1.0] * 3
    assert re.search(rf"pass@1\s+{100 * expected:.2f}%", result.stdout)


def load_script():
    spec = importlib.util.spec_from_file_location("evaluate_cli", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_user_errors_are_one_line_with_status_2(tmp_path, mbpp_path, capsys):
    cli = load_script()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task_id": "11", "completion": "x"}\n{not json\n')
    cases = [
        (["--samples", bad, "--mbpp", mbpp_path], f"{bad}:2"),
        (["--ckpt", tmp_path / "missing"], "does not exist"),
        (["--model", tmp_path / "missing"], "does not exist"),
        ([], "exactly one of"),
        (["--samples", bad, "--k", "1,x"], "--k"),
        (["--samples", bad, "--dataset", "humaneval", "--split", "train"], "only the test split"),
        (["--samples", bad, "--mbpp", tmp_path / "none.jsonl"], "prepare_data.py"),
        (["--samples", bad, "--ckpt", tmp_path / "run"], "exactly one of"),
        (["--model", tmp_path / "m", "--arch-override", "L_cycles=2"], "--arch-override applies to --ckpt"),
        (["--samples", bad, "--arch-override", "L_cycles=2"], "--arch-override applies to --ckpt"),
        (["--ckpt", tmp_path / "run", "--arch-override", "L_cycles"], "KEY=VALUE (e.g. L_cycles=3)"),
        (["--ckpt", tmp_path / "run", "--arch-override", "L_cycles=[1, 2]"], "must be a scalar"),
        (["--samples", bad, "--prompt-lookup", "3"], "--prompt-lookup is a way of decoding"),
        (["--ckpt", tmp_path / "run", "--prompt-lookup", "3", "--temperature", "0.8"], "decodes greedily"),
        (["--ckpt", tmp_path / "run", "--prompt-lookup", "3", "--compile"], "drop --compile"),
        (
            ["--ckpt", tmp_path / "run", "--arch-override", "L_cycles=1", "--arch-override", "L_cycles=2"],
            "--arch-override L_cycles is given twice",
        ),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit) as stop:
            cli.main([*map(str, args), "--output", str(tmp_path / "out"), "--no-progress"])
        stderr = capsys.readouterr().err
        assert stop.value.code == 2, (args, stderr)
        assert stderr.count("\n") == 1 and message in stderr, (args, stderr)


def test_model_type_is_deprecated_accepted_and_ignored(tmp_path, capsys):
    cli = load_script()
    for kind, source in (("hrm", "--ckpt"), ("hf", "--model"), ("hf", "--ckpt"), ("anything", "--samples")):
        args = cli.parse_args(["--model-type", kind, source, str(tmp_path / "x"), "--output", str(tmp_path)])
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--model-type is deprecated and ignored: --ckpt" in err
        assert "model_type" not in vars(args)
    cli.parse_args(["--ckpt", str(tmp_path / "x"), "--output", str(tmp_path)])
    assert capsys.readouterr().err == ""


def _processes_mentioning(text: str) -> list[int]:
    """Pids of the processes whose command line contains `text` (e.g. a sandbox runner's directory)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except OSError:  # the process ended meanwhile
            continue
    return pids


@pytest.mark.parametrize(
    ("stop", "sigint_ignored", "status"),
    [(signal.SIGINT, False, 130), (signal.SIGINT, True, 130), (signal.SIGTERM, False, 143)],
    ids=["sigint-foreground", "sigint-started-in-background", "sigterm"],
)
def test_sigint_or_sigterm_stops_at_once_and_a_rerun_resumes(
    tmp_path, mbpp_path, stop, sigint_ignored, status
):
    """Ctrl-C (or SIGTERM) while two programs sleep for 30 s (60 s timeout): exit within seconds, samples kept.

    A shell starting a command in the background (`cmd &` in a script) hands it SIGINT ignored; the CLI
    listens to SIGINT all the same.
    """
    chosen = mbpp_problems(load_mbpp(mbpp_path), "test")[:4]
    samples = tmp_path / "samples_in.jsonl"
    lines = [{"task_id": p.task_id, "completion": p.reference} for p in chosen[:2]]
    lines += [{"task_id": p.task_id, "completion": "import time\ntime.sleep(30)\n"} for p in chosen[2:]]
    samples.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out, runner_tmp = tmp_path / "eval", tmp_path / "runners"  # the runners' directories live in TMPDIR
    runner_tmp.mkdir()
    args = ["--samples", samples, "--mbpp", mbpp_path, "--limit", 4, "--output", out]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(runner_tmp)}
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--no-progress", "--workers", "2", "--timeout", "60", *map(str, args)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=ignore,
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "samples.jsonl").is_file() or len(read_jsonl(out / "samples.jsonl")) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        time.sleep(0.5)  # the two sleeping programs are running now
        assert _processes_mentioning(str(runner_tmp))
        interrupted = time.monotonic()
        proc.send_signal(stop)
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    # Well under the programs' 30 s (what waiting for them would take); not a few seconds, which a loaded 2-core
    # machine needs to tear the sandboxes down (5.4-6.5 s seen beside two evaluations and the rest of the suite).
    assert time.monotonic() - interrupted < 15
    assert proc.returncode == status, stderr
    assert ("terminated" if stop == signal.SIGTERM else "interrupted") in stderr
    assert "Traceback" not in stderr
    kept = read_jsonl(out / "samples.jsonl")
    assert sorted((r["task_id"], r["passed"]) for r in kept) == [(p.task_id, True) for p in chosen[:2]]
    assert not (out / "summary.json").exists()
    assert _processes_mentioning(str(runner_tmp)) == []  # the runners (and their programs) are gone

    result = run_cli(*args, "--timeout", 1)  # the same output resumes; --timeout may change
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["samples_resumed"] == 2 and summary["samples_run"] == 2
    assert summary["results"]["passed"] == 2 and summary["results"]["timeout"] == 2
    assert len(read_jsonl(out / "samples.jsonl")) == 4


@pytest.mark.slow
def test_hrm_checkpoint_end_to_end_with_resume(tmp_path, mbpp_path, tokenizer, tiny_hrm_config, problems):
    model, arch = tiny_hrm(tokenizer, tiny_hrm_config)
    run_dir = tmp_path / "run"
    save_step(run_dir, 5, model, {"arch": {"name": "hrm", **arch}}, tokenizer)
    out = tmp_path / "eval"
    common = [
        "--ckpt",
        run_dir,
        "--mbpp",
        mbpp_path,
        "--limit",
        2,
        "--max-new-tokens",
        8,
        "--temperature",
        1.0,
        "--output",
        out,
    ]
    first = run_cli(*common, "--num-samples", 2, "--k", "1,2")
    assert first.returncode == 0, first.stderr
    records = read_jsonl(out / "samples.jsonl")
    assert sorted((r["task_id"], r["sample_index"]) for r in records) == [
        ("11", 0),
        ("11", 1),
        ("12", 0),
        ("12", 1),
    ]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["samples_run"] == 4 and set(summary["pass_at_k"]) == {"1", "2"}
    assert json.loads((out / "eval_config.json").read_text())["source"].endswith("step_5")

    second = run_cli(*common, "--num-samples", 3)
    assert second.returncode == 0, second.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["samples_run"], summary["samples_resumed"], summary["num_samples"]) == (2, 4, 6)
    again = read_jsonl(out / "samples.jsonl")  # rewritten in problem order, the first run's records kept
    assert [(r["task_id"], r["sample_index"]) for r in again] == [
        (t, i) for t in ("11", "12") for i in range(3)
    ]
    assert [r for r in again if r["sample_index"] < 2] == records
    assert (
        summary["config"]["threads"] >= 1 and summary["config"]["batch_size"] == 8
    )  # chosen for the machine

    changed = run_cli(*common, "--num-samples", 3, "--seed", 1)
    assert changed.returncode == 2 and "seed=0" in changed.stderr

    quantized = run_cli(
        *common[:-1], tmp_path / "int4", "--quantize", "int4", "--threads", 1, "--batch-size", 3
    )
    assert quantized.returncode == 0, quantized.stderr
    config = json.loads((tmp_path / "int4" / "summary.json").read_text())["config"]
    assert (config["quantize"], config["threads"], config["batch_size"]) == ("int4", 1, 3)
    assert config["int4_backend"] in ("int4 kernel", "int4 values in fp32 weights")

    # The CLI's greedy completion is the model's own greedy continuation of [BOS] + prompt, cut at a stop.
    greedy_out = tmp_path / "greedy"
    greedy = run_cli(
        "--ckpt",
        run_dir,
        "--mbpp",
        mbpp_path,
        "--limit",
        1,
        "--max-new-tokens",
        8,
        "--output",
        greedy_out,
    )
    assert greedy.returncode == 0, greedy.stderr
    prompt = torch.tensor([[tokenizer.bos_id, *tokenizer.encode(problems[0].prompt)]])
    ids = generate(model, prompt, max_new_tokens=8, eos_token_id=tokenizer.eos_id).completion_ids[0]
    expected = cut_at_stop(tokenizer.decode(ids), MBPP_STOP_STRINGS)
    assert read_jsonl(greedy_out / "samples.jsonl")[0]["completion"] == expected

    # Prompt lookup decoding: the same greedy completion, one sequence at a time, the setting recorded.
    lookup_out = tmp_path / "lookup"
    lookup = run_cli(
        "--ckpt", run_dir, "--mbpp", mbpp_path, "--limit", 1, "--max-new-tokens", 8, "--prompt-lookup", 4,
        "--output", lookup_out,
    )  # fmt: skip
    assert lookup.returncode == 0, lookup.stderr
    assert read_jsonl(lookup_out / "samples.jsonl")[0]["completion"] == expected
    config = json.loads((lookup_out / "summary.json").read_text())["config"]
    assert (config["prompt_lookup"], config["batch_size"]) == (4, 1)
    assert "prompt_lookup" not in json.loads((greedy_out / "summary.json").read_text())["config"]


@pytest.mark.slow
def test_hf_model_end_to_end(tmp_path, mbpp_path, gpt2_dir, problems):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    hf_tokenizer = AutoTokenizer.from_pretrained(gpt2_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(hf_tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        bos_token_id=hf_tokenizer.bos_token_id,
        eos_token_id=hf_tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    model_dir = tmp_path / "llama"
    model.save_pretrained(model_dir)
    hf_tokenizer.save_pretrained(model_dir)
    out = tmp_path / "eval"
    result = run_cli(
        "--model-type",
        "hf",
        "--model",
        model_dir,
        "--mbpp",
        mbpp_path,
        "--limit",
        2,
        "--max-new-tokens",
        8,
        "--output",
        out,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("--model-type is deprecated and ignored") == 1
    records = {r["task_id"]: r for r in read_jsonl(out / "samples.jsonl")}
    assert sorted(records) == ["11", "12"]
    assert json.loads((out / "summary.json").read_text())["num_samples"] == 2
    # Greedy HF generation of the prompt encoded as the native format says, `[BOS] prompt` as in training (GPT-2's
    # tokenizer adds none itself), decoded and cut at a stop string.
    ids = [hf_tokenizer.bos_token_id, *hf_tokenizer.encode(problems[0].prompt)]
    new = model.generate(
        torch.tensor([ids]), max_new_tokens=8, do_sample=False, pad_token_id=hf_tokenizer.eos_token_id
    )
    expected = cut_at_stop(hf_tokenizer.decode(new[0, len(ids) :]), MBPP_STOP_STRINGS)
    assert records["11"]["completion"] == expected


def test_samples_do_not_depend_on_batching_or_resume(tokenizer, tiny_hrm_config, problems):
    model, _ = tiny_hrm(tokenizer, tiny_hrm_config)
    sampling = SamplingConfig(max_new_tokens=6, temperature=1.0, seed=3, batch_size=4)
    together = ModelCompletions(model, tokenizer, sampling, progress=False, family=HRM)(
        problems[:2], [[0, 1, 2], [0, 1]]
    )
    one_by_one = ModelCompletions(
        model,
        tokenizer,
        SamplingConfig(max_new_tokens=6, temperature=1.0, seed=3, batch_size=1),
        progress=False,
        family=HRM,
    )
    assert one_by_one(problems[1:2], [[1]]) == [[together[1][1]]]
    assert one_by_one(problems[:1], [[2, 0]]) == [[together[0][2], together[0][0]]]
    assert len(set(together[0])) == 3  # the samples of one problem differ
    assert sample_seed(3, "11", 0) != sample_seed(3, "11", 1) != sample_seed(4, "11", 1)


def test_prompts_longer_than_the_model_keep_bos_and_their_end(tokenizer, tiny_hrm_config, problems):
    model, _ = tiny_hrm(tokenizer, tiny_hrm_config, seq_len=16)
    completions = ModelCompletions(
        model, tokenizer, SamplingConfig(max_new_tokens=4), progress=False, family=HRM
    )
    full = [tokenizer.bos_id, *tokenizer.encode(problems[0].prompt)]
    fitted = completions.encode(problems[0].prompt)
    assert len(fitted) == 12 and fitted[0] == tokenizer.bos_id and fitted[1:] == full[-11:]
    assert completions.truncated_prompts(problems) == [p.task_id for p in problems]
    assert all(len(texts) == 1 for texts in completions(problems[:2], [[0], [0]]))
    roomy = ModelCompletions(model, tokenizer, SamplingConfig(max_new_tokens=4), progress=False, family=HRM)
    roomy.model.config.seq_len = 4096
    assert roomy.truncated_prompts(problems) == [] and roomy.encode(problems[0].prompt) == full


def test_hf_directory_prompt_format_follows_its_tokenizer(tmp_path, gpt2_dir, tokenizer, problems):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    )
    plain_dir, project_dir = tmp_path / "plain", tmp_path / "project"
    for directory in (plain_dir, project_dir):
        model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(gpt2_dir).save_pretrained(plain_dir)
    tokenizer.save(project_dir)  # a CodeTokenizer writes fingerprint.txt
    prompt_ids = tokenizer.encode(problems[0].prompt)
    for directory, expected in ((plain_dir, prompt_ids), (project_dir, [tokenizer.bos_id, *prompt_ids])):
        pretrained = load_pretrained(directory)
        loaded, loaded_tokenizer = pretrained.model, pretrained.tokenizer
        completions = ModelCompletions(loaded, loaded_tokenizer, SamplingConfig(), progress=False)
        assert completions.encode(problems[0].prompt) == expected


def test_the_checkpoints_training_format_is_read_and_a_mismatch_is_noticed(
    tmp_path, mbpp_path, tokenizer, tiny_hrm_config, capsys
):
    cli = load_script()
    model, arch = tiny_hrm(tokenizer, tiny_hrm_config)
    native, chat = tmp_path / "native", tmp_path / "chat"
    save_step(native, 1, model, {"arch": {"name": "hrm", **arch}}, tokenizer)
    save_step(chat, 1, model, {"arch": {"name": "hrm", **arch}, "data": {"prompt_format": "chat"}}, tokenizer)
    assert cli.checkpoint_data(str(native)).get("prompt_format") is None  # not said: native
    assert cli.checkpoint_data(str(chat))["prompt_format"] == "chat"
    assert cli.checkpoint_data(str(chat)).get("few_shot") is None
    for run_dir, noticed in ((native, False), (chat, True)):
        prompts = tmp_path / f"{run_dir.name}.jsonl"
        argv = [
            "--ckpt",
            str(run_dir),
            "--mbpp",
            str(mbpp_path),
            "--limit",
            "2",
            "--write-prompts",
            str(prompts),
        ]
        assert cli.run(cli.parse_args(argv)) == {"prompts_written": 2}
        err = capsys.readouterr().err
        assert ("trained in prompt format 'chat', evaluated here in 'native'" in err) is noticed
