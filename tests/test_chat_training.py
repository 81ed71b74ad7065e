"""data.prompt_format=chat: MBPP training examples in an instruct model's chat format, exactly as evaluation's
`--prompt-format chat` renders the prompt, then the code and the closing fence."""

from functools import partial
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from hrm_codegen.datasets.assembly import build_datasets
from hrm_codegen.datasets.mbpp import MBPPDataset, load_mbpp, normalize_code, split_tasks
from hrm_codegen.datasets.protocols import build_problems, mbpp_chat_example
from hrm_codegen.tokenization import CodeTokenizer
from hrm_codegen.train_config import compose_config, validate_config

# A template that renders the assistant's content (as EvalPlus's prefill needs) and adds no BOS of its own.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@pytest.fixture(scope="module")
def chat_tok(gpt2_dir: Path) -> CodeTokenizer:
    hf = AutoTokenizer.from_pretrained(str(gpt2_dir))
    hf.chat_template = CHAT_TEMPLATE
    return CodeTokenizer(hf, gpt2_dir)


@pytest.fixture(scope="module")
def rows(mbpp_path: Path) -> list[dict]:
    return load_mbpp(mbpp_path)


def _chat_dataset(rows, tok, split="validation", **kwargs) -> MBPPDataset:
    return MBPPDataset(rows, split, tok, 1024, chat=partial(mbpp_chat_example, tokenizer=tok.hf), **kwargs)


def test_chat_examples_are_the_evaluation_prompt_then_the_code_the_fence_and_eos(rows, chat_tok):
    dataset = _chat_dataset(rows, chat_tok)
    problems = {
        p.task_id: p for p in build_problems("mbpp", rows, "chat", split="validation", tokenizer=chat_tok.hf)
    }
    tasks = {str(t["task_id"]): t for t in split_tasks(rows, "validation")}
    assert dataset.num_dropped == 0 and len(dataset) == len(tasks) == 90
    for index, task_id in enumerate(dataset.task_ids):
        item = dataset[index]
        ids, labels = item["input_ids"].tolist(), item["labels"].tolist()
        prompt_length = int(item["token_type_ids"].sum())
        # the prompt is what evaluation feeds the model: the tokenizer's own special tokens, no training BOS
        assert ids[:prompt_length] == chat_tok.hf(problems[str(task_id)].prompt)["input_ids"]
        assert ids[0] != chat_tok.bos_id
        assert ids[-1] == chat_tok.eos_id
        target = chat_tok.hf.decode(ids[prompt_length:-1])
        assert target == normalize_code(tasks[str(task_id)]["code"]) + "\n```\n"
        assert labels[: prompt_length - 1] == [-100] * (prompt_length - 1)
        assert labels[prompt_length - 1 : -1] == ids[prompt_length:] and labels[-1] == -100


def test_chat_and_native_encodings_keep_separate_cache_entries(rows, chat_tok, tmp_path):
    native = MBPPDataset(rows, "prompt", chat_tok, 1024, cache_dir=tmp_path)
    chat = _chat_dataset(rows, chat_tok, split="prompt", cache_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 2
    assert native.input_ids[0] != chat.input_ids[0]
    again = _chat_dataset(rows, chat_tok, split="prompt", cache_dir=tmp_path)
    assert again.input_ids == chat.input_ids and len(list(tmp_path.iterdir())) == 2


def test_the_chat_format_refuses_few_shot(rows, chat_tok):
    with pytest.raises(ValueError, match=r"data.few_shot=2: the chat format trains zero-shot"):
        _chat_dataset(rows, chat_tok, few_shot=2)


def test_data_prompt_format_chat_builds_chat_splits_from_the_config(rows, chat_tok, mbpp_path, gpt2_dir):
    cfg = compose_config(
        [
            "arch=tiny",
            f"data.path={mbpp_path}",
            f"tokenizer.name_or_path={gpt2_dir}",
            "data.prompt_format=chat",
        ]
    )
    validate_config(cfg)
    train, validation = build_datasets(cfg, chat_tok, use_cache=False)
    assert validation[0]["input_ids"].tolist() == _chat_dataset(rows, chat_tok)[0]["input_ids"].tolist()
    assert len(train) > 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.prompt_format=instruct"], r"data.prompt_format='instruct': expected native or chat"),
        (["data=pairs", "data.prompt_format=chat"], r"data.prompt_format=chat is for data=mbpp; data=pairs"),
    ],
)
def test_bad_prompt_formats_are_one_line_errors(overrides, message):
    with pytest.raises(ValueError, match=message) as err:
        validate_config(compose_config(["arch=tiny", *overrides]))
    assert "\n" not in str(err.value)
