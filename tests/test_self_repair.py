"""Self-repair at inference (`hrm_codegen.repair`, `evaluate.py --repair-rounds`): with a model stub, the
feedback prompt in each format, the round limit, the token count and the feedback-assisted label; then the CLI
end to end with a tiny HRM."""

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import save_step
from transformers import AutoTokenizer

from hrm_codegen.datasets.humaneval import humaneval_problems
from hrm_codegen.datasets.mbpp import load_mbpp
from hrm_codegen.datasets.protocols import build_problems
from hrm_codegen.evaluation import evaluate, format_summary_table
from hrm_codegen.execution import SandboxLimits
from hrm_codegen.models import HierarchicalReasoningModel_ACTV1
from hrm_codegen.repair import Feedback, SelfRepair, repair_prompt, repair_summary, shown_attempt
from hrm_codegen.tokenization import load_tokenizer

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "evaluate.py"
LIMITS = SandboxLimits(timeout_s=1.0, memory_mb=1024)
WRONG = "def remove_Occ(s, ch):\n    return s\n"  # MBPP task 11: fails its first assert, returning 'hello'
TEST_11 = 'assert remove_Occ("hello","l") == "heo"'
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


class ScriptedModel:
    """A model stub (a completion source): per task, its completion on each call for a sample (round 0,
    1, ...; the last repeats). It keeps the prompts it saw per (task, sample) and reports a completion's
    length in characters as its generated tokens."""

    def __init__(self, scripts: dict[str, list[str]]) -> None:
        self.scripts = scripts
        self.prompts: dict[tuple[str, int], list[str]] = {}
        self.last_records: list[list[dict]] = []

    def __call__(self, problems, indices):
        completions = []
        for problem, wanted in zip(problems, indices, strict=True):
            texts = []
            for index in wanted:
                seen = self.prompts.setdefault((problem.task_id, index), [])
                script = self.scripts[problem.task_id]
                texts.append(script[min(len(seen), len(script) - 1)])
                seen.append(problem.prompt)
            completions.append(texts)
        self.last_records = [
            [{"num_tokens": len(t), "finish_reason": "eos"} for t in row] for row in completions
        ]
        return completions


@pytest.fixture(scope="module")
def rows(mbpp_path):
    return load_mbpp(mbpp_path)


@pytest.fixture(scope="module")
def native(rows):
    return {p.task_id: p for p in build_problems("mbpp", rows, "native")[:2]}  # tasks 11 and 12


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def repair_once(problem, completion: str, rounds: int = 1) -> tuple[ScriptedModel, dict]:
    """Run SelfRepair on one sample whose completion never changes; the stub and the sample's record."""
    model = ScriptedModel({problem.task_id: [completion]})
    with SelfRepair(model, rounds, limits=LIMITS, workers=2) as repair:
        repair([problem], [[0]])
    return model, repair.last_records[0][0]


def test_the_feedback_prompt_shows_the_failing_assert_and_its_value(native):
    problem = native["11"]
    model, record = repair_once(problem, WRONG)
    first, second = model.prompts[("11", 0)]
    assert first == problem.prompt
    # native: the prompt, the failed code, then a docstring with the feedback, after which code follows again
    assert second == (
        problem.prompt + WRONG + '"""\nThe code above fails this test:\n' + TEST_11 + "\n"
        'remove_Occ("hello","l") evaluates to \'hello\'\nWrite the corrected code.\n"""\n'
    )
    assert record["repair_attempts"][0]["feedback"] == (
        f'The code above fails this test:\n{TEST_11}\nremove_Occ("hello","l") evaluates to \'hello\''
    )


@pytest.mark.parametrize(
    ("completion", "feedback"),
    [
        (  # an error inside an assert: the assert and the error's last line
            "def remove_Occ(s, ch):\n    return s.remove(ch)\n",
            f"fails this test:\n{TEST_11}\nAttributeError: 'str' object has no attribute 'remove'\n",
        ),
        ("def remove_Occ(s, ch)\n    return s\n", "fails to run:\nSyntaxError: expected ':'\n"),
        ("import missing_module\n", "fails to run:\nModuleNotFoundError: No module named 'missing_module'\n"),
        (  # a limit: which assert was running
            "def remove_Occ(s, ch):\n    while True:\n        pass\n",
            f"fails this test:\n{TEST_11}\nIt did not finish within the time limit.\n",
        ),
        (  # the program's own output does not hide the report (it is discarded while the checks run)
            "def remove_Occ(s, ch):\n    print('x' * 100000)\n    return 'heo'\n",
            'fails this test:\nassert remove_Occ("abcda","a") == "bcd"\n'
            'remove_Occ("abcda","a") evaluates to \'heo\'\n',
        ),
    ],
    ids=["exception", "syntax", "import", "timeout", "noisy"],
)
def test_errors_give_their_last_line(native, completion, feedback):
    model, _ = repair_once(native["11"], completion)
    repair = model.prompts[("11", 0)][1]
    assert repair.endswith(f'"""\nThe code above {feedback}Write the corrected code.\n"""\n'), repair


def test_a_model_that_never_fixes_stops_after_the_round_limit(tmp_path, native):
    problem = native["11"]
    model = ScriptedModel({"11": [WRONG]})
    with SelfRepair(model, 3, limits=LIMITS, workers=2) as repair:
        summary = evaluate([problem], repair, num_samples=1, ks=[1], output_dir=tmp_path, progress=False)
    assert len(model.prompts[("11", 0)]) == 4  # round 0 and three repairs, no more
    (record,) = read_jsonl(tmp_path / "samples.jsonl")
    assert record["repair_rounds"] == 3 and not record["passed"] and record["completion"] == WRONG
    attempts = record["repair_attempts"]
    assert [a["visible_passed"] for a in attempts] == [False] * 4
    assert [a["passed"] for a in attempts] == [False, False, False, None]  # the last is the sample's `passed`
    assert [a["num_tokens"] for a in attempts] == [len(WRONG)] * 4
    assert record["num_tokens"] == 4 * len(WRONG)  # every round's generated tokens
    repaired = summary["self_repair"]
    assert repaired["pass_at_1_by_round"] == [0.0] * 4
    assert repaired["generated_tokens_by_round"] == [len(WRONG)] * 4
    assert repaired["generated_tokens"] == 4 * len(WRONG) and repaired["samples_fixed"] == 0


def test_a_fix_in_round_one_passes_and_ends_the_repairs(tmp_path, native):
    fixed, right = native["11"].reference, native["12"].reference
    model = ScriptedModel({"11": [WRONG, fixed], "12": [right]})
    with SelfRepair(model, 3, limits=LIMITS, workers=2) as repair:
        summary = evaluate(
            list(native.values()), repair, num_samples=1, ks=[1], output_dir=tmp_path, progress=False
        )
    assert len(model.prompts[("11", 0)]) == 2 and len(model.prompts[("12", 0)]) == 1
    records = {r["task_id"]: r for r in read_jsonl(tmp_path / "samples.jsonl")}
    first = records["11"]
    assert first["passed"] and first["completion"] == fixed and first["repair_rounds"] == 1
    assert [(a["visible_passed"], a["passed"]) for a in first["repair_attempts"]] == [
        (False, False),
        (True, None),
    ]
    assert first["num_tokens"] == len(WRONG) + len(fixed)
    assert records["12"]["repair_rounds"] == 0 and records["12"]["repair_attempts"][0]["feedback"] is None
    assert summary["pass_at_k"]["1"] == 1.0
    repaired = summary["self_repair"]
    assert repaired["pass_at_1_by_round"] == [0.5, 1.0, 1.0, 1.0]
    assert repaired["generated_tokens_by_round"] == [len(WRONG) + len(right), len(fixed), 0, 0]
    assert repaired["generated_tokens"] == len(WRONG) + len(right) + len(fixed)
    assert (repaired["samples_repaired"], repaired["samples_fixed"]) == (1, 1)
    # MBPP's judge runs the very asserts the feedback showed: the score is labelled feedback-assisted
    assert repaired["feedback_assisted"] and "feedback-assisted" in repaired["judge"]
    table = format_summary_table(summary)
    assert "pass@1 (feedback-assisted)" in table and "50.00% > 100.00% > 100.00% > 100.00%" in table


def test_on_hidden_tests_the_judge_is_not_the_feedback(tmp_path, native):
    # an MBPP+-style problem: the prompt's asserts give the feedback, hidden inputs judge
    hidden = native["11"].test_program + '\nassert remove_Occ("abc","z") == "abc"'
    problem = replace(native["11"], dataset="mbppplus", test_program=hidden)
    memorized = 'def remove_Occ(s, ch):\n    return {"hello": "heo", "abcda": "bcd", "PHP": "H"}[s]\n'
    model = ScriptedModel({"11": [memorized]})
    with SelfRepair(model, 2, limits=LIMITS, workers=2) as repair:
        summary = evaluate([problem], repair, num_samples=1, ks=[1], output_dir=tmp_path, progress=False)
    (record,) = read_jsonl(tmp_path / "samples.jsonl")
    assert len(model.prompts[("11", 0)]) == 1  # the visible asserts pass: no repair
    assert record["repair_attempts"][0]["visible_passed"] and not record["passed"]
    assert record["result"] == "error" and record["detail"] == "KeyError"
    assert (
        not summary["self_repair"]["feedback_assisted"] and summary["self_repair"]["judge"] == "hidden tests"
    )
    assert "feedback-assisted" not in format_summary_table(summary)


def test_a_judge_running_the_solution_from_a_string_is_checked_on_its_code(native):
    # MBPP+ judged as EvalPlus does: the program is `SOLUTION = '<the code>'` then a judge that runs it
    judge = "namespace = {}\nexec(SOLUTION, namespace)\nassert namespace['remove_Occ']('abc', 'z') == 'abc'"
    problem = replace(native["11"], dataset="mbppplus", judged=True, test_program=judge)
    _, record = repair_once(problem, WRONG)
    first = record["repair_attempts"][0]
    assert first["feedback"].endswith('remove_Occ("hello","l") evaluates to \'hello\'')  # the code ran
    assert first["passed"] is True  # judged by the hidden judge, which this attempt happens to pass
    summary = repair_summary([problem], {"11": 1}, {("11", 0): {**record, "passed": True}}, 1)
    assert not summary["feedback_assisted"] and summary["base_feedback_assisted"]


def test_visible_asserts_follow_the_prompt_format(rows):
    shown = {
        fmt: build_problems("mbpp", rows, fmt)[0].visible_tests for fmt in ("native", "bigcode", "lm-eval")
    }
    task = next(row for row in rows if row["task_id"] == 11)
    assert shown == {
        "native": tuple(task["test_list"]),
        "bigcode": (TEST_11,),
        "lm-eval": tuple(task["test_list"]),
    }
    setups = {fmt: build_problems("mbpp", rows, fmt)[356] for fmt in ("native", "bigcode")}
    assert setups["native"].task_id == "367" and "root = Node(1)" in setups["native"].visible_setup
    assert setups["bigcode"].visible_setup == ""  # bigcode's program runs no test_setup_code
    plus_row = {**task, "test": "assert True", "test_imports": ["import math"]}
    (plus,) = build_problems("mbppplus", [plus_row], "bigcode")
    assert (plus.visible_tests, plus.visible_setup) == ((TEST_11,), "import math\n")


def test_repair_prompts_in_each_format(rows, gpt2_dir):
    tokenizer = AutoTokenizer.from_pretrained(str(gpt2_dir))
    tokenizer.chat_template = CHAT_TEMPLATE
    feedback = Feedback(TEST_11, 'remove_Occ("hello","l") evaluates to \'hello\'')
    told = f'fails this test:\n{TEST_11}\nremove_Occ("hello","l") evaluates to \'hello\'\n'
    expected = {
        "bigcode": f'{WRONG}"""\nThe code above {told}Write the corrected code.\n"""\n',
        "lm-eval": f"{WRONG}[DONE]\n\nThe code above {told}Write the corrected code.\n[BEGIN]\n",
        "chat": (
            f"{WRONG.rstrip()}\n```<|end|>\n<|user|>\nYour code {told}"
            "Please fix it and give the whole corrected script in a markdown code block.<|end|>\n"
            "<|assistant|>\n"
            "Below is a Python script with a self-contained function that solves the problem and passes "
            "corresponding tests:\n```python\n"
        ),
    }
    for fmt, tail in expected.items():
        problem = build_problems("mbpp", rows, fmt, tokenizer=tokenizer)[0]
        assert repair_prompt(problem, WRONG, feedback, tokenizer) == problem.prompt + tail, fmt
    chat = build_problems("mbpp", rows, "chat", tokenizer=tokenizer)[0]
    with pytest.raises(ValueError, match="chat template"):
        repair_prompt(chat, WRONG, feedback, None)


def test_a_long_failed_attempt_is_cut_at_a_line_end():
    shown = shown_attempt("".join(f"x{i} = {i}\n" for i in range(100)))
    assert shown.splitlines()[:40] == [f"x{i} = {i}" for i in range(40)]
    assert shown.splitlines()[40:] == ["# ... (the rest of this code is not shown)"]
    assert len(shown_attempt("y = '" + "a" * 5000 + "'\n").splitlines()[0]) == 2000
    assert shown_attempt("  \n") == "# (no code)\n"


def load_script():
    spec = importlib.util.spec_from_file_location("evaluate_cli_repair", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_problems_without_visible_asserts_are_refused(tmp_path, capsys):
    with (
        SelfRepair(ScriptedModel({}), 1, limits=LIMITS) as repair,
        pytest.raises(ValueError, match="no asserts"),
    ):
        repair(humaneval_problems()[:1], [[0]])
    cli = load_script()
    samples = tmp_path / "in.jsonl"
    cases = [
        (["--model", "m", "--dataset", "humaneval"], "humaneval's prompts show none"),
        (["--samples", samples], "needs a model to generate repairs"),
        (["--model", "m", "--repair-rounds", "-1"], "must be >= 0"),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit) as stop:
            cli.parse_args(["--repair-rounds", "1", *map(str, args), "--output", str(tmp_path / "out")])
        stderr = capsys.readouterr().err
        assert stop.value.code == 2 and stderr.count("\n") == 1 and message in stderr, stderr


def test_cli_repair_rounds_end_to_end(tmp_path, mbpp_path, gpt2_dir, tiny_hrm_config):
    tokenizer = load_tokenizer(gpt2_dir)
    arch = {**tiny_hrm_config, "vocab_size": tokenizer.vocab_size, "seq_len": 256}
    torch.manual_seed(0)
    model = HierarchicalReasoningModel_ACTV1(arch).eval()
    run_dir = tmp_path / "run"
    save_step(run_dir, 5, model, {"arch": {"name": "hrm", **arch}}, tokenizer)
    out = tmp_path / "eval"
    command = [sys.executable, str(SCRIPT), "--no-progress", "--workers", "2", "--ckpt", str(run_dir)]
    command += ["--mbpp", str(mbpp_path), "--limit", "2", "--max-new-tokens", "8", "--timeout", "2"]
    command += ["--repair-rounds", "1", "--output", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    records = read_jsonl(out / "samples.jsonl")
    assert [r["task_id"] for r in records] == ["11", "12"]
    for record in records:  # an untrained model fails: one repair each, its tokens counted
        attempts = record["repair_attempts"]
        assert record["repair_rounds"] == 1 and len(attempts) == 2 and not attempts[0]["visible_passed"]
        assert attempts[0]["feedback"].startswith("The code above fails")
        assert (
            record["num_tokens"] == sum(a["num_tokens"] for a in attempts) and attempts[1]["num_tokens"] >= 1
        )
        assert record["completion"] == attempts[1]["completion"]
    summary = json.loads((out / "summary.json").read_text())
    repaired = summary["self_repair"]
    assert (
        repaired["rounds"] == 1 and repaired["feedback_assisted"] and len(repaired["pass_at_1_by_round"]) == 2
    )
    assert repaired["generated_tokens"] == sum(r["num_tokens"] for r in records)
    assert summary["config"]["repair_rounds"] == 1 and "pass@1 (feedback-assisted)" in result.stdout
    # a resumed run must not mix settings: the same directory without self-repair is refused
    cli = load_script()
    settings = json.loads((out / "eval_config.json").read_text())
    assert settings["repair_rounds"] == 1
    del settings["repair_rounds"]
    with pytest.raises(ValueError, match="repair_rounds=1"):
        cli.check_run_config(out, {**settings, "samples": None})
