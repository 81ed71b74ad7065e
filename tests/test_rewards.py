"""The execution reward: a program that passes its asserts scores 1, one that fails, loops past its time limit or
meets a crashed sandbox scores 0, never an exception; each call's pass, solved, timeout and sandbox-error rates
reach TRL's `log_metric`."""

import pytest

from hrm_codegen.datasets.problems import Problem
from hrm_codegen.execution import Sandbox, SandboxLimits
from hrm_codegen.rewards import ExecutionReward

PROBLEMS = [
    Problem("add", "def add(a, b):", "assert add(1, 2) == 3"),
    Problem("neg", "def neg(a):", "assert neg(2) == -2"),
]
PASS, FAIL, LOOP = (
    "def add(a, b):\n    return a + b",
    "def add(a, b):\n    return a - b",
    "while True:\n    pass",
)


@pytest.fixture
def reward():
    made = ExecutionReward(PROBLEMS, SandboxLimits(timeout_s=1.0), workers=2)
    yield made
    made.close()


def test_pass_fail_timeout_score_1_0_0_and_their_rates_are_logged(reward):
    logged: dict[str, list[float]] = {}
    scores = reward(
        prompts=["p"] * 4,
        completions=[PASS, FAIL, LOOP, "def neg(a):\n    return -a"],
        task_id=["add", "add", "add", "neg"],
        log_metric=lambda name, value: logged.setdefault(name, []).append(value),
    )
    assert scores == [1.0, 0.0, 0.0, 1.0]
    assert [r.status if r else None for r in reward.last_results] == ["passed", "failed", "timeout", "passed"]
    assert logged == {
        "execution/pass_rate": [0.5],
        "execution/solved_rate": [1.0],  # both tasks have a passing completion
        "execution/timeout_rate": [0.25],
        "execution/sandbox_error_rate": [0.0],
    }


def test_a_crashing_sandbox_scores_0_and_the_next_call_gets_a_new_one(reward, monkeypatch):
    def crash(self, program):
        raise BrokenPipeError("the runner died")

    with monkeypatch.context() as patch:
        patch.setattr(Sandbox, "submit", crash)
        logged: dict[str, float] = {}
        scores = reward(
            completions=[PASS, PASS], task_id=["add", "add"], log_metric=lambda n, v: logged.update({n: v})
        )
    assert scores == [0.0, 0.0]
    assert logged["execution/sandbox_error_rate"] == 1.0 and logged["execution/pass_rate"] == 0.0
    assert reward.statuses["sandbox_error"] == 2
    assert reward(completions=[PASS], task_id=["add"]) == [1.0]  # restarted
