"""scripts/generate.py, the command to try a model by hand: it streams the completion it returns, runs the given
asserts, and decodes the same text with prompt lookup."""

import pytest
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
