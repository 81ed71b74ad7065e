"""Reproduce rows of the README's results table: train, evaluate on the MBPP test split, record the numbers.

    python scripts/reproduce.py mbpp_cpu_hrm mbpp_cpu_llama_params       # these rows
    python scripts/reproduce.py all --sampled-limit 100                  # every row
    python scripts/reproduce.py table                                    # docs/results/results.md + mbpp_*.png

The rows are data: configs/results/<group>.yaml, one file per table. A row runs its commands in order (printed,
and recorded in docs/results/<row>/row.json): preparing commands (the retrofit rows fetch the source model and
retrofit it), building the corpus or the mined pairs when a stage trains on them, one training run per stage
(scripts/train_codegen.py), then scripts/evaluate.py: pass@1 with greedy decoding (n=1) and pass@1/pass@10 from
n=20 samples at temperature 0.8, top-p 0.95 (and greedy pass@1 on all of HumanEval where the row asks). A step
whose output is complete (a corpus manifest, a run at its last step, an evaluation summary) is skipped, so an
interrupted row continues where it stopped. The record keeps the training wall time (measured around each
training command and saved as <run dir>/wall_time.json), the parameters, the tokens processed (non-padding
input tokens, prompts included), the final validation loss, pass@k and the syntax-valid rate; `table` turns the
records into a markdown table and a plot of the loss curves and pass@k bars per group (hrm_codegen/report.py).
"""

from __future__ import annotations

import argparse
import sys

from hrm_codegen import reproduction
from hrm_codegen.report import GROUPS
from hrm_codegen.result_rows import RowsFileError, load_rows


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments and run the rows (or write the table)."""
    try:
        rows = load_rows(list(GROUPS))
    except RowsFileError as err:
        sys.exit(f"error: {err}")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("rows", nargs="+", help=f"row names ({', '.join(rows)}), `all`, or `table`")
    p.add_argument("--mbpp", default="data/mbpp/mbpp.jsonl", help="MBPP jsonl (relative to the repository)")
    p.add_argument(
        "--mbppplus",
        default="../shared/data/evalplus/MbppPlus.jsonl",
        help="EvalPlus's MBPP+ source file, for the rows with mbppplus: true (relative to the repository)",
    )
    p.add_argument("--tokenizer", default="gpt2", help="tokenizer directory or Hub name")
    p.add_argument(
        "--corpus",
        default=None,
        help="corpus directory for the corpus stages (default: the stage config's data.corpus_dir)",
    )
    p.add_argument(
        "--greedy-limit", type=int, default=None, help="greedy pass@1 on the first N test problems"
    )
    p.add_argument("--sampled-limit", type=int, default=None, help="pass@10 on the first N test problems")
    p.add_argument("--greedy-only", action="store_true", help="skip the n=20 sampled evaluation")
    p.add_argument("--hardware", default=None, help="hardware named in the table (default: detected)")
    args = p.parse_args(argv)
    args.row_flags = [  # the options given, to show the command that reproduces a row
        *(
            part
            for key in ("mbpp", "mbppplus", "tokenizer", "corpus", "greedy_limit", "sampled_limit")
            if getattr(args, key) != p.get_default(key)
            for part in (f"--{key.replace('_', '-')}", str(getattr(args, key)))
        ),
        *(["--greedy-only"] if args.greedy_only else []),
    ]
    names = list(rows) if args.rows == ["all"] else args.rows
    if names == ["table"]:
        reproduction.write_table(rows)
        return
    unknown = [n for n in names if n not in rows]
    if unknown:
        p.error(f"unknown row(s) {unknown}; expected {list(rows)}, all or table")
    for name in names:
        reproduction.reproduce(rows, name, args)


if __name__ == "__main__":
    main()
