"""scripts/generate.py, the command to try a model by hand: it streams the completion it returns, runs the given
asserts, and decodes the same text with prompt lookup."""

import pytest
import torch
from conftest import load_script, save_step
from test_evaluate_cli import tiny_hrm

from hrm_codegen.tokenization import load_tokenizer


def test_streams_the_greedy_completion_with_and_without_prompt_lookup(
    tmp_path, gpt2_dir, tiny_hrm_config, capsys
):
    tokenizer = load_tokenizer(gpt2_dir)
    model, arch = tiny_hrm(tokenizer, tiny_hrm_config)
    save_step(tmp_path / "run", 1, model, {"arch": {"name": "hrm", **arch}}, tokenizer)
    cli = load_script("generate")
    task = ["Write a function to add two numbers.", "--test", "assert add(1, 2) == 3"]
    common = ["--ckpt", str(tmp_path / "run"), "--max-new-tokens", "12", "--threads", "1"]
    outputs = []
    for extra in ([], ["--prompt-lookup", "4"]):
        cli.main([*task, *common, *extra])
        captured = capsys.readouterr()
        assert "tokens, stopped by" in captured.err
        assert "your 1 assert(s): failed" in captured.err  # a random tiny model does not write add()
        outputs.append(captured.out)
    assert outputs[0].strip(), "the completion is streamed to stdout"
    assert outputs[1] == outputs[0]


def test_prompt_lookup_with_sampling_is_refused(tmp_path, capsys):
    cli = load_script("generate")
    with pytest.raises(SystemExit) as stop:
        cli.main(["task", "--ckpt", str(tmp_path), "--temperature", "0.8", "--prompt-lookup", "3"])
    assert stop.value.code == 2
    assert "decodes greedily" in capsys.readouterr().err


def test_arch_overrides_and_per_token_exits_by_hand(tmp_path, gpt2_dir, tiny_hrm_config, capsys):
    tokenizer = load_tokenizer(gpt2_dir)
    model, arch = tiny_hrm(tokenizer, tiny_hrm_config, exit_gate=True)
    with torch.no_grad():  # a gate that sends some tokens out early, not all
        model.model.exit_head.weight.normal_(0.0, 1.0)
    save_step(tmp_path / "run", 1, model, {"arch": {"name": "hrm", **arch}}, tokenizer)
    plain, plain_arch = tiny_hrm(tokenizer, tiny_hrm_config)
    save_step(tmp_path / "plain", 1, plain, {"arch": {"name": "hrm", **plain_arch}}, tokenizer)
    cli = load_script("generate")

    def generate(*extra: str, ckpt: str = "run"):
        argv = ["Write a function to add two numbers.", "--ckpt", str(tmp_path / ckpt), "--threads", "1"]
        cli.main([*argv, "--max-new-tokens", "12", *extra])
        return capsys.readouterr()

    def layers(err: str) -> tuple[float, int]:
        line = next(x for x in err.splitlines() if "per-token exits at" in x)
        mean, _, full = line.split(": ", 1)[1].split(" layer evaluations")[0].split(" ")
        return float(mean), int(full)

    fixed = generate()
    never = generate("--halt-threshold", "1.0")  # never exits early: the fixed-cycle text, every layer
    assert never.out == fixed.out and layers(never.err) == (6.0, 6)  # 2 H cycles x (2 L calls + 1 H call)
    mean, full = layers(generate("--halt-threshold", "0.0").err)  # every token leaves after its first L step
    assert full == 6 and mean < 6
    one_cycle = generate("--arch-override", "L_cycles=1", "--halt-threshold", "1.0")
    assert layers(one_cycle.err) == (4.0, 4)  # the test-time override: 2 x (1 + 1)
    for extra, ckpt, message in (
        (["--halt-threshold", "0.5"], "plain", "has no exit gate"),
        (["--arch-override", "L_cycles"], "run", "KEY=VALUE (e.g. L_cycles=3)"),
        (["--halt-threshold", "1.5"], "run", "between 0 and 1"),
    ):
        with pytest.raises(SystemExit) as stop:
            generate(*extra, ckpt=ckpt)
        assert stop.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert message in err[-1] and all(line.startswith(("usage:", " ")) for line in err[:-1]), err
