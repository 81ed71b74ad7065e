"""data=pairs: mined pairs train in MBPP's own prompt format with the loss on the code only, packed or not,
validated on MBPP; the three-stage recipe composes."""

import json
from pathlib import Path

import pytest

from hrm_codegen.datasets.assembly import build_datasets
from hrm_codegen.datasets.batching import PackedDataset
from hrm_codegen.datasets.mbpp import build_prompt, normalize_code
from hrm_codegen.datasets.pairs import PairsFormatError
from hrm_codegen.tokenization import load_tokenizer
from hrm_codegen.train_config import compose_config
from hrm_codegen.training import run

PAIRS = [
    {
        "task_id": f"test:f{i}",
        "text": f"Return the number {i} plus x.",
        "code": f"def f{i}(x):\n    return x + {i}\n",
        "test_list": [f"assert f{i}(1) == {i + 1}"] if i % 2 else [],
        "source": "test.py:1",
        "verified": bool(i % 2),
    }
    for i in range(12)
]


@pytest.fixture
def pairs_file(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    return path


def _config(pairs_file, mbpp_path, gpt2_dir, tmp_path, *extra):
    return compose_config(
        [
            "data=pairs",
            f"data.pairs_path={pairs_file}",
            f"data.path={mbpp_path}",
            f"tokenizer.name_or_path={gpt2_dir}",
            f"checkpoint_root={tmp_path / 'ck'}",
            "arch=tiny",
            "arch.hidden_size=32",
            "arch.seq_len=256",
            "train.global_batch_size=2",
            "train.max_steps=2",
            "train.eval_every=0",
            "train.num_threads=1",
            "data.eval_limit=4",
            *extra,
        ]
    )


def test_pairs_use_the_mbpp_prompt_and_train_on_the_code_only(pairs_file, mbpp_path, gpt2_dir, tmp_path):
    cfg = _config(pairs_file, mbpp_path, gpt2_dir, tmp_path, "data.pack=false")
    tokenizer = load_tokenizer(gpt2_dir)
    train, val = build_datasets(cfg, tokenizer, use_cache=False)
    assert len(train) == 12 and len(val) == 4  # validation is MBPP's
    item = train[1]
    prompt_ids = [tokenizer.bos_id, *tokenizer.encode(build_prompt(PAIRS[1]))]
    assert item["input_ids"].tolist() == [
        *prompt_ids,
        *tokenizer.encode(normalize_code(PAIRS[1]["code"])),
        tokenizer.eos_id,
    ]
    assert "assert f1(1) == 2" in build_prompt(PAIRS[1])  # a verified pair shows its asserts, as MBPP does
    labels = item["labels"].tolist()
    assert all(t == -100 for t in labels[: len(prompt_ids) - 1])  # no loss on the prompt
    assert (
        labels[len(prompt_ids) - 1] == item["input_ids"][len(prompt_ids)]
    )  # the first code token is a target
    packed, _ = build_datasets(_config(pairs_file, mbpp_path, gpt2_dir, tmp_path), tokenizer, use_cache=False)
    assert isinstance(packed, PackedDataset) and packed.num_examples == 12 and len(packed) < 12
    result = run(_config(pairs_file, mbpp_path, gpt2_dir, tmp_path, "run_name=pairs"))
    assert result["step"] == 2


def test_a_bad_pairs_file_is_one_clear_error(tmp_path, mbpp_path, gpt2_dir):
    bad = tmp_path / "pairs.jsonl"
    bad.write_text(json.dumps(PAIRS[0]) + "\n" + json.dumps({**PAIRS[1], "code": 3}) + "\n")
    with pytest.raises(PairsFormatError, match=r"pairs.jsonl:2: field 'code'"):
        build_datasets(_config(bad, mbpp_path, gpt2_dir, tmp_path), load_tokenizer(gpt2_dir), use_cache=False)
    with pytest.raises(ValueError, match="data.name=pairs needs data.pairs_path"):
        build_datasets(
            _config(bad, mbpp_path, gpt2_dir, tmp_path, "data.pairs_path=null"), load_tokenizer(gpt2_dir)
        )


def test_pairs_sources_keeps_only_the_named_sources(tmp_path, mbpp_path, gpt2_dir):
    """A rejection-sampling round's pairs file holds MBPP's solutions (source mbpp/train) and the sampled programs;
    data.pairs_sources trains on a part of it, in the file's order, and an absent source is one clear error."""
    rows = [
        {**p, "source": "mbpp/train" if i % 3 == 0 else "rejection_sampling/round_1"}
        for i, p in enumerate(PAIRS)
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tokenizer = load_tokenizer(gpt2_dir)
    every, _ = build_datasets(
        _config(path, mbpp_path, gpt2_dir, tmp_path, "data.pack=false"), tokenizer, use_cache=False
    )
    kept, _ = build_datasets(
        _config(path, mbpp_path, gpt2_dir, tmp_path, "data.pack=false", "data.pairs_sources=[mbpp/train]"),
        tokenizer,
        use_cache=False,
    )
    assert len(every) == 12 and len(kept) == 4
    assert [kept[i]["input_ids"].tolist() for i in range(4)] == [
        every[i]["input_ids"].tolist() for i in (0, 3, 6, 9)
    ]
    with pytest.raises(
        ValueError, match=r"data.pairs_sources=\['mined'\]: no pair .* its pairs have \['mbpp/train'"
    ):
        build_datasets(
            _config(path, mbpp_path, gpt2_dir, tmp_path, "data.pairs_sources=[mined]"),
            tokenizer,
            use_cache=False,
        )


def test_the_three_stage_recipe_chains_its_runs():
    stages = [
        compose_config([f"experiment={name}"])
        for name in (
            "pretrain_then_pairs_then_mbpp",
            "pretrain_then_pairs_then_mbpp_pairs",
            "pretrain_then_pairs_then_mbpp_finetune",
        )
    ]
    assert [c.data.name for c in stages] == ["corpus", "pairs", "mbpp"]
    assert stages[1].train.init_from.endswith(stages[0].run_name)
    assert stages[2].train.init_from.endswith(stages[1].run_name)
    assert (
        stages[0].train.max_steps + stages[1].train.max_steps
        == compose_config(["experiment=pretrain_then_mbpp"]).train.max_steps
    )
    assert len({c.arch.seq_len for c in stages}) == 1
