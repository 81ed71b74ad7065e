"""Prompt protocols: rendered prompts pinned as literal strings (checked against the harnesses' own task
definitions: bigcode-evaluation-harness 8fc5bae, lm-evaluation-harness v0.4.12, EvalPlus v0.3.1), stop
sequences, program assembly, prompt files, and the chat format with a tokenizer's chat template."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from hrm_codegen.datasets.humaneval import HUMANEVAL_STOP_STRINGS, humaneval_problems
from hrm_codegen.datasets.mbpp import MBPP_STOP_STRINGS, load_mbpp, mbpp_problems
from hrm_codegen.datasets.protocols import (
    BOS_ALWAYS,
    BOS_TOKENIZER,
    FORMATS,
    build_problems,
    default_timeout_s,
    extract_code,
    mbpp_entry_point,
    raw_format_notice,
    stop_sequences,
    write_prompts,
)
from hrm_codegen.datasets.sources import load_rows
from hrm_codegen.execution import run_programs

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@pytest.fixture(scope="module")
def mbpp_rows(mbpp_path):
    return load_mbpp(mbpp_path)


@pytest.fixture(scope="module")
def humaneval_rows():
    return load_rows("humaneval")


@pytest.fixture(scope="module")
def chat_tokenizer(gpt2_dir):
    tokenizer = AutoTokenizer.from_pretrained(str(gpt2_dir))
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@pytest.fixture(scope="module")
def plain_tokenizer(gpt2_dir):
    return AutoTokenizer.from_pretrained(str(gpt2_dir))


def by_id(problems):
    return {p.task_id: p for p in problems}


LM_EVAL_MBPP_SHOTS = (
    "You are an expert Python programmer, and here is your task: Write a function to find the similar elements from the given two tuple lists. Your code should pass these tests:\n"
    "\n"
    "assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)\n"
    "assert similar_elements((1, 2, 3, 4),(5, 4, 3, 7)) == (3, 4)\n"
    "assert similar_elements((11, 12, 14, 13),(17, 15, 14, 13)) == (13, 14)\n"
    "[BEGIN]\n"
    "def similar_elements(test_tup1, test_tup2):\r\n"
    "  res = tuple(set(test_tup1) & set(test_tup2))\r\n"
    "  return (res) \n"
    "[DONE]\n"
    "\n"
    "You are an expert Python programmer, and here is your task: Write a python function to identify non-prime numbers. Your code should pass these tests:\n"
    "\n"
    "assert is_not_prime(2) == False\n"
    "assert is_not_prime(10) == True\n"
    "assert is_not_prime(35) == True\n"
    "[BEGIN]\n"
    "import math\r\n"
    "def is_not_prime(n):\r\n"
    "    result = False\r\n"
    "    for i in range(2,int(math.sqrt(n)) + 1):\r\n"
    "        if n % i == 0:\r\n"
    "            result = True\r\n"
    "    return result\n"
    "[DONE]\n"
    "\n"
    "You are an expert Python programmer, and here is your task: Write a function to find the largest integers from a given list of numbers using heap queue algorithm. Your code should pass these tests:\n"
    "\n"
    "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],3)==[85, 75, 65] \n"
    "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],2)==[85, 75] \n"
    "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],5)==[85, 75, 65, 58, 35]\n"
    "[BEGIN]\n"
    "import heapq as hq\r\n"
    "def heap_queue_largest(nums,n):\r\n"
    "  largest_nums = hq.nlargest(n, nums)\r\n"
    "  return largest_nums\n"
    "[DONE]\n"
    "\n"
)

BIGCODE_MBPP_PROMPTS = {
    "11": (
        '"""\n'
        "Write a python function to remove first and last occurrence of a given character from the string.\n"
        'assert remove_Occ("hello","l") == "heo"\n'
        '"""\n'
    ),
    "12": (
        '"""\n'
        "Write a function to sort a given matrix in ascending order according to the sum of its rows.\n"
        "assert sort_matrix([[1, 2, 3], [2, 4, 5], [1, 1, 1]])==[[1, 1, 1], [1, 2, 3], [2, 4, 5]]\n"
        '"""\n'
    ),
    "13": (
        '"""\n'
        "Write a function to count the most common words in a dictionary.\n"
        "assert count_common(['red','green','black','pink','black','white','black','eyes','white','black','orange','pink','pink','red','red','white','orange','white',\"black\",'pink','green','green','pink','green','pink','white','orange',\"orange\",'red']) == [('pink', 6), ('black', 5), ('white', 5), ('red', 4)]\n"
        '"""\n'
    ),
}

LM_EVAL_MBPP_TASK_TEXTS = {
    "11": (
        "You are an expert Python programmer, and here is your task: Write a python function to remove first and last occurrence of a given character from the string. Your code should pass these tests:\n"
        "\n"
        'assert remove_Occ("hello","l") == "heo"\n'
        'assert remove_Occ("abcda","a") == "bcd"\n'
        'assert remove_Occ("PHP","P") == "H"\n'
        "[BEGIN]\n"
    ),
    "12": (
        "You are an expert Python programmer, and here is your task: Write a function to sort a given matrix in ascending order according to the sum of its rows. Your code should pass these tests:\n"
        "\n"
        "assert sort_matrix([[1, 2, 3], [2, 4, 5], [1, 1, 1]])==[[1, 1, 1], [1, 2, 3], [2, 4, 5]]\n"
        "assert sort_matrix([[1, 2, 3], [-2, 4, -5], [1, -1, 1]])==[[-2, 4, -5], [1, -1, 1], [1, 2, 3]]\n"
        "assert sort_matrix([[5,8,9],[6,4,3],[2,1,4]])==[[2, 1, 4], [6, 4, 3], [5, 8, 9]]\n"
        "[BEGIN]\n"
    ),
    "13": (
        "You are an expert Python programmer, and here is your task: Write a function to count the most common words in a dictionary. Your code should pass these tests:\n"
        "\n"
        "assert count_common(['red','green','black','pink','black','white','black','eyes','white','black','orange','pink','pink','red','red','white','orange','white',\"black\",'pink','green','green','pink','green','pink','white','orange',\"orange\",'red']) == [('pink', 6), ('black', 5), ('white', 5), ('red', 4)]\n"
        "assert count_common(['one', 'two', 'three', 'four', 'five', 'one', 'two', 'one', 'three', 'one']) == [('one', 4), ('two', 2), ('three', 2), ('four', 1)]\n"
        "assert count_common(['Facebook', 'Apple', 'Amazon', 'Netflix', 'Google', 'Apple', 'Netflix', 'Amazon']) == [('Apple', 2), ('Amazon', 2), ('Netflix', 2), ('Facebook', 1)]\n"
        "[BEGIN]\n"
    ),
}

BIGCODE_HUMANEVAL_PROMPTS = {
    "HumanEval/2": (
        "def truncate_number(number: float) -> float:\n"
        '    """ Given a positive floating point number, it can be decomposed into\n'
        "    and integer part (largest integer smaller than given number) and decimals\n"
        "    (leftover part always smaller than 1).\n"
        "\n"
        "    Return the decimal part of the number.\n"
        "    >>> truncate_number(3.5)\n"
        "    0.5\n"
        '    """'
    ),
    "HumanEval/23": (
        "def strlen(string: str) -> int:\n"
        '    """ Return length of given string\n'
        "    >>> strlen('')\n"
        "    0\n"
        "    >>> strlen('abc')\n"
        "    3\n"
        '    """'
    ),
}

LM_EVAL_HUMANEVAL_PROMPTS = {
    "HumanEval/2": (
        "\n"
        "\n"
        "def truncate_number(number: float) -> float:\n"
        '    """ Given a positive floating point number, it can be decomposed into\n'
        "    and integer part (largest integer smaller than given number) and decimals\n"
        "    (leftover part always smaller than 1).\n"
        "\n"
        "    Return the decimal part of the number.\n"
        "    >>> truncate_number(3.5)\n"
        "    0.5\n"
        '    """\n'
    ),
    "HumanEval/23": (
        "\n"
        "\n"
        "def strlen(string: str) -> int:\n"
        '    """ Return length of given string\n'
        "    >>> strlen('')\n"
        "    0\n"
        "    >>> strlen('abc')\n"
        "    3\n"
        '    """\n'
    ),
}


def test_bigcode_mbpp_prompts_and_program(mbpp_rows):
    problems = by_id(build_problems("mbpp", mbpp_rows, "bigcode"))
    assert len(problems) == 500 and min(map(int, problems)) == 11 and max(map(int, problems)) == 510
    for task_id, expected in BIGCODE_MBPP_PROMPTS.items():
        assert problems[task_id].prompt == expected
    p = problems["12"]
    completion = "def sort_matrix(M):\n    return sorted(M, key=sum)\nassert sort_matrix([]) == []\n"
    assert p.program(completion) == (
        BIGCODE_MBPP_PROMPTS["12"] + "def sort_matrix(M):\n    return sorted(M, key=sum)" + "\n"
        "assert sort_matrix([[1, 2, 3], [2, 4, 5], [1, 1, 1]])==[[1, 1, 1], [1, 2, 3], [2, 4, 5]]\n"
        "assert sort_matrix([[1, 2, 3], [-2, 4, -5], [1, -1, 1]])==[[-2, 4, -5], [1, -1, 1], [1, 2, 3]]\n"
        "assert sort_matrix([[5,8,9],[6,4,3],[2,1,4]])==[[2, 1, 4], [6, 4, 3], [5, 8, 9]]"
    )


def test_lm_eval_mbpp_prompts_and_program(mbpp_rows):
    problems = by_id(build_problems("mbpp", mbpp_rows, "lm-eval"))
    assert len(problems) == 500
    for task_id, text in LM_EVAL_MBPP_TASK_TEXTS.items():
        assert problems[task_id].prompt == LM_EVAL_MBPP_SHOTS + text
    # the completion alone (no prompt) then the three asserts, as lm-eval's code_eval reference
    assert problems["11"].program("def remove_Occ(s, ch):\n    return s\n[DONE] junk") == (
        "def remove_Occ(s, ch):\n    return s\n"
        '\nassert remove_Occ("hello","l") == "heo"\nassert remove_Occ("abcda","a") == "bcd"\n'
        'assert remove_Occ("PHP","P") == "H"'
    )
    one_shot = by_id(build_problems("mbpp", mbpp_rows, "lm-eval", few_shot=1))["11"].prompt
    assert (
        one_shot
        == LM_EVAL_MBPP_SHOTS[: LM_EVAL_MBPP_SHOTS.index("You are", 10)] + LM_EVAL_MBPP_TASK_TEXTS["11"]
    )
    zero_shot = by_id(build_problems("mbpp", mbpp_rows, "lm-eval", few_shot=0))["11"].prompt
    assert zero_shot == LM_EVAL_MBPP_TASK_TEXTS["11"]


def test_humaneval_harness_prompts_and_programs(humaneval_rows):
    bigcode = by_id(build_problems("humaneval", humaneval_rows, "bigcode"))
    lm_eval = by_id(build_problems("humaneval", humaneval_rows, "lm-eval"))
    assert len(bigcode) == len(lm_eval) == 164
    for task_id in BIGCODE_HUMANEVAL_PROMPTS:
        assert bigcode[task_id].prompt == BIGCODE_HUMANEVAL_PROMPTS[task_id]
        assert lm_eval[task_id].prompt == LM_EVAL_HUMANEVAL_PROMPTS[task_id]
    tests = (
        "\n\nMETADATA = {\n    'author': 'jt',\n    'dataset': 'test'\n}\n\n\ndef check(candidate):\n"
        "    assert candidate('') == 0\n    assert candidate('x') == 1\n    assert candidate('asdasnakj') == 9\n"
    )
    body = "\n    return len(string)\n# trailing comment"
    assert bigcode["HumanEval/23"].program(body) == (
        BIGCODE_HUMANEVAL_PROMPTS["HumanEval/23"]
        + "\n    return len(string)"
        + "\n\n"
        + tests
        + "\ncheck(strlen)"
    )
    assert lm_eval["HumanEval/23"].program(body) == (
        LM_EVAL_HUMANEVAL_PROMPTS["HumanEval/23"]
        + "\n    return len(string)"
        + "\n"
        + tests
        + "\ncheck(strlen)"
    )


def test_each_format_carries_its_harness_bos_rule_and_generation_length():
    """native: training's `[BOS] prompt`; the harnesses encode with the tokenizer's own special tokens
    (bigcode-evaluation-harness, lm-evaluation-harness v0.4.12, EvalPlus v0.3.1) and generate up to 512
    (bigcode max_length_generation), 256 / 1024 (lm-eval MBPP max_gen_toks default / humaneval.yaml), 768 (EvalPlus)."""
    rules = {name: f.bos for name, f in FORMATS.items()}
    assert rules == {
        "native": BOS_ALWAYS,
        "bigcode": BOS_TOKENIZER,
        "lm-eval": BOS_TOKENIZER,
        "chat": BOS_TOKENIZER,
    }
    lengths = {
        name: (f.default_max_new_tokens("mbpp"), f.default_max_new_tokens("humaneval"))
        for name, f in FORMATS.items()
    }
    assert lengths == {
        "native": (256, 256),
        "bigcode": (512, 512),
        "lm-eval": (256, 1024),
        "chat": (768, 768),
    }
    for f in FORMATS.values():
        assert f.default_max_new_tokens("mbppplus") == f.default_max_new_tokens("mbpp")
        assert f.default_max_new_tokens("humanevalplus") == f.default_max_new_tokens("humaneval")
    with pytest.raises(ValueError, match="unknown dataset 'apps'"):
        FORMATS["native"].default_max_new_tokens("apps")


def test_stop_sequences_per_dataset_and_format():
    assert stop_sequences("mbpp", "bigcode") == (
        "\nclass",
        "\nassert",
        '\n"""',
        "\nprint",
        "\nif",
        "\n<|/",
        "\n```",
    )
    assert stop_sequences("humaneval", "bigcode") == (
        "\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif", "\n```", "<file_sep>",
    )  # fmt: skip
    assert stop_sequences("mbpp", "lm-eval") == ("[DONE]",)
    assert stop_sequences("humaneval", "lm-eval") == ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
    chat = ("<|endoftext|>", "<|endofmask|>", "</s>", "\nif __name__", "\ndef main(", "\nprint(", "\n```\n")
    assert stop_sequences("mbpp", "chat") == stop_sequences("humaneval", "chat") == chat
    assert stop_sequences("mbpp", "native") == tuple(MBPP_STOP_STRINGS)
    assert stop_sequences("humaneval", "native") == tuple(HUMANEVAL_STOP_STRINGS)
    assert "\n```" in HUMANEVAL_STOP_STRINGS and "\n```" in MBPP_STOP_STRINGS
    for fmt in FORMATS:
        assert stop_sequences("mbppplus", fmt) == stop_sequences("mbpp", fmt)
        assert stop_sequences("humanevalplus", fmt) == stop_sequences("humaneval", fmt)
    assert default_timeout_s("mbpp") < default_timeout_s("mbppplus") == default_timeout_s("humanevalplus")
    with pytest.raises(ValueError, match="unknown prompt format 'raw'"):
        stop_sequences("mbpp", "raw")
    with pytest.raises(ValueError, match="unknown dataset 'apps'"):
        stop_sequences("apps", "native")


def test_native_is_the_existing_problems(mbpp_rows, humaneval_rows):
    native = build_problems("mbpp", mbpp_rows, "native", split="validation", few_shot=2)
    existing = mbpp_problems(mbpp_rows, "validation", few_shot=2)
    assert [(p.task_id, p.prompt, p.test_program, p.program("x = 1")) for p in native] == [
        (p.task_id, p.prompt, p.test_program, p.program("x = 1")) for p in existing
    ]
    assert native[0].stop_sequences == tuple(MBPP_STOP_STRINGS) and native[0].entry_point
    he = build_problems("humaneval", humaneval_rows, "native")
    assert [(p.task_id, p.prompt, p.program("    pass\n")) for p in he] == [
        (p.task_id, p.prompt, p.program("    pass\n")) for p in humaneval_problems()
    ]


def test_write_prompts_for_every_mbpp_test_problem(tmp_path, mbpp_rows, chat_tokenizer):
    for fmt in FORMATS:
        problems = build_problems("mbpp", mbpp_rows, fmt, tokenizer=chat_tokenizer)
        path = tmp_path / fmt / "prompts.jsonl"
        assert write_prompts(path, problems) == 500
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        assert [r["task_id"] for r in records] == [str(i) for i in range(11, 511)]
        assert {r["format"] for r in records} == {fmt} and {r["dataset"] for r in records} == {"mbpp"}
        assert [r["prompt"] for r in records] == [p.prompt for p in problems]
        assert records[0]["stop_sequences"] == list(stop_sequences("mbpp", fmt))
        assert records[0]["test_program"] == problems[0].test_program
    records = [json.loads(line) for line in (tmp_path / "bigcode" / "prompts.jsonl").read_text().splitlines()]
    assert records[2]["prompt"] == BIGCODE_MBPP_PROMPTS["13"] and records[2]["include_prompt"] is True


def test_chat_wraps_in_the_template_and_extracts_code(mbpp_rows, humaneval_rows, chat_tokenizer):
    mbpp = by_id(build_problems("mbpp", mbpp_rows, "chat", tokenizer=chat_tokenizer))
    assert mbpp["11"].prompt == (
        "<|user|>\n"
        "Please provide a self-contained Python script that solves the following problem in a markdown code block:\n"
        '```\n"""\n'
        "Write a python function to remove first and last occurrence of a given character from the string.\n"
        'assert remove_Occ("hello","l") == "heo"\n'
        '"""\n```\n'
        "<|end|>\n"
        "<|assistant|>\n"
        "Below is a Python script with a self-contained function that solves the problem and passes corresponding"
        " tests:\n```python\n"
    )
    he = by_id(build_problems("humaneval", humaneval_rows, "chat", tokenizer=chat_tokenizer))
    assert he["HumanEval/23"].prompt == (
        "<|user|>\n"
        "Please provide a self-contained Python script that solves the following problem in a markdown code block:\n"
        "```\n"
        "def strlen(string: str) -> int:\n"
        '    """ Return length of given string\n'
        "    >>> strlen('')\n"
        "    0\n"
        "    >>> strlen('abc')\n"
        "    3\n"
        '    """\n'
        "```\n"
        "<|end|>\n"
        "<|assistant|>\n"
        "Below is a Python script with a self-contained function that solves the problem and passes corresponding"
        " tests:\n```python\n"
    )
    completion = (
        "def remove_Occ(s, ch):\n\treturn s.replace(ch, '', 1)[::-1].replace(ch, '', 1)[::-1]\n\n"
        "print(remove_Occ('hello', 'l'))\n```\n\nThis removes both occurrences."
    )
    assert mbpp["11"].program(completion) == (
        "def remove_Occ(s, ch):\n    return s.replace(ch, '', 1)[::-1].replace(ch, '', 1)[::-1]\n"
        "\n"
        'assert remove_Occ("hello","l") == "heo"\nassert remove_Occ("abcda","a") == "bcd"\n'
        'assert remove_Occ("PHP","P") == "H"\n'
    )
    assert mbpp["11"].entry_point == "remove_Occ"
    program = he["HumanEval/23"].program("def strlen(string):\n    return len(string)\n```")
    assert program.startswith("def strlen(string):\n    return len(string)\n\n\n\nMETADATA = {")
    assert program.endswith("\ncheck(strlen)\n")


def test_chat_refused_without_a_chat_template(mbpp_rows, plain_tokenizer):
    with pytest.raises(ValueError, match="'chat' needs a tokenizer with a chat template.*has none"):
        build_problems("mbpp", mbpp_rows, "chat", tokenizer=plain_tokenizer)
    with pytest.raises(ValueError, match="'chat' needs a tokenizer with a chat template"):
        build_problems("humaneval", load_rows("humaneval"), "chat")


def test_raw_format_notice(chat_tokenizer, plain_tokenizer):
    notice = raw_format_notice(chat_tokenizer, "bigcode")
    assert notice is not None and "chat template" in notice and "'bigcode'" in notice and "\n" not in notice
    assert raw_format_notice(chat_tokenizer, "chat") is None
    assert raw_format_notice(plain_tokenizer, "native") is None

    class Wrapped:  # a project CodeTokenizer keeps the Hugging Face tokenizer in `.hf`
        hf = chat_tokenizer

    assert raw_format_notice(Wrapped(), "lm-eval") is not None


def test_extract_code_takes_the_first_fenced_block():
    assert (
        extract_code("def f():\n    return 1\n```\nMore text\n```python\nx = 2\n```")
        == "def f():\n    return 1\n"
    )
    assert extract_code("Here it is:\n```python\ndef f():\n    return 1\n```\n```python\nx = 2\n```") == (
        "def f():\n    return 1\n"
    )
    assert extract_code("```py\ndef f():\n    return 1\n") == "def f():\n    return 1\n"
    assert extract_code("def f():\n    return 1\n") == "def f():\n    return 1\n"


def test_bad_requests_get_one_clear_error(mbpp_rows, humaneval_rows):
    with pytest.raises(ValueError, match="'bigcode' on 'mbpp' is zero-shot; got few_shot=2"):
        build_problems("mbpp", mbpp_rows, "bigcode", few_shot=2)
    with pytest.raises(ValueError, match="0 to 3 MBPP shots, got 4"):
        build_problems("mbpp", mbpp_rows, "lm-eval", few_shot=4)
    with pytest.raises(ValueError, match="only the 'test' split, got split='train'"):
        build_problems("humaneval", humaneval_rows, "native", split="train")
    with pytest.raises(ValueError, match="mbpp row 1: missing field\\(s\\) 'test_list'"):
        build_problems("mbpp", [mbpp_rows[0], {"task_id": 2, "text": "x"}], "bigcode")
    with pytest.raises(ValueError, match=r"tasks \[2, 3, 4\], missing from the MBPP rows"):
        build_problems("mbpp", [r for r in mbpp_rows if r["task_id"] > 10], "lm-eval")
    short = [dict(mbpp_rows[10], test_list=mbpp_rows[10]["test_list"][:2])]
    with pytest.raises(ValueError, match="MBPP task 11: format 'lm-eval' needs 3 asserts"):
        build_problems("mbpp", short, "lm-eval", few_shot=0)


def test_entry_point_is_the_tested_function():
    task = {
        "test_list": ["assert set(similar_elements((3, 4), (4,))) == set((4,))"],
        "code": "def similar_elements(a, b): ...",
    }
    assert mbpp_entry_point(task) == "similar_elements"
    assert mbpp_entry_point({"test_list": ["assert math.isclose(area(2), 4)"]}) == "area"


def test_reference_solutions_pass_in_the_sandbox(mbpp_rows, humaneval_rows):
    """Each format's program runs: the reference passes, a wrong completion fails."""
    mbpp = {fmt: by_id(build_problems("mbpp", mbpp_rows, fmt)) for fmt in ("bigcode", "lm-eval")}
    he = {fmt: by_id(build_problems("humaneval", humaneval_rows, fmt)) for fmt in ("bigcode", "lm-eval")}
    reference = mbpp["bigcode"]["12"].reference
    body = "\n    return len(string)\n"
    programs = [
        mbpp["bigcode"]["12"].program(reference),
        mbpp["lm-eval"]["12"].program(reference + "\n[DONE]"),
        he["bigcode"]["HumanEval/23"].program(body),
        he["lm-eval"]["HumanEval/23"].program("    return len(string)\n"),
        mbpp["lm-eval"]["12"].program("def sort_matrix(M):\n    return M\n"),
        he["bigcode"]["HumanEval/23"].program("\n    return 0\n"),
    ]
    results = dict(run_programs(programs, workers=2, progress=False))
    assert [results[i].status for i in range(len(programs))] == ["passed"] * 4 + ["failed"] * 2


def test_harness_test_programs_follow_their_references(mbpp_rows):
    """bigcode runs every assert of test_list, lm-eval the first three; neither runs test_setup_code."""
    task = dict(
        next(r for r in mbpp_rows if r["task_id"] == 11),
        test_list=["assert 1", "assert 2", "assert 3", "assert 4"],
    )
    bigcode = build_problems("mbpp", [task], "bigcode")[0]
    lm_eval = build_problems("mbpp", [task], "lm-eval", few_shot=0)[0]
    assert bigcode.test_program == "\nassert 1\nassert 2\nassert 3\nassert 4"
    assert lm_eval.test_program == "\nassert 1\nassert 2\nassert 3"
    with_setup = by_id(build_problems("mbpp", mbpp_rows, "native"))["367"]
    assert with_setup.test_program.startswith("root = Node(1)")
    for fmt in ("bigcode", "lm-eval"):
        assert by_id(build_problems("mbpp", mbpp_rows, fmt))["367"].test_program.startswith(
            "\nassert is_tree_balanced"
        )
    chat_plus = {"task_id": 2, "text": "t", "test_list": ["assert f()"], "test": "assert f()"}
    with pytest.raises(
        ValueError,
        match=r"mbppplus row 0 \(load plus rows with hrm_codegen\.datasets\.evalplus\): missing field\(s\) 'text', 'test_list', 'test'$",
    ):
        build_problems("mbppplus", [{"task_id": 2}], "native")
    assert build_problems("mbppplus", [chat_plus], "bigcode")[0].test_program == "\nassert f()"
