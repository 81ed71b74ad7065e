"""The problem interface the evaluator uses, shared by MBPP and HumanEval."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One benchmark problem: the prompt a model completes and the test program that judges a completion."""

    task_id: str
    prompt: str
    test_program: str  # runs after the completed program; raises on failure
    reference: str = ""  # the reference solution, when the benchmark ships one
    setup_code: str = ""  # runs before the completed program (MBPP's test_setup_code)
    include_prompt: bool = False  # True when the prompt is part of the program (HumanEval's signature)

    def program(self, completion: str) -> str:
        """The full program to execute: setup, (prompt,) completion, then the tests."""
        body = self.prompt + completion if self.include_prompt else completion
        parts = [self.setup_code, body, self.test_program]
        return "\n".join(p for p in parts if p) + "\n"

    def syntax_source(self, completion: str) -> str:
        """The source whose syntax the syntax-valid rate counts: the whole program."""
        return self.program(completion)
