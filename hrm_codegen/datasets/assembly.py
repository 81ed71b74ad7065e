"""Data assembly: the (train, validation) datasets a config asks for, from MBPP, mined pairs or a corpus."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from omegaconf import DictConfig
from torch.utils.data import ConcatDataset, Dataset, Subset

from hrm_codegen.datasets.batching import PackedDataset
from hrm_codegen.datasets.cache import file_sha256
from hrm_codegen.datasets.corpus import CorpusDataset
from hrm_codegen.datasets.mbpp import MBPPDataset, load_mbpp
from hrm_codegen.datasets.pairs import PairsDataset, load_pairs
from hrm_codegen.datasets.protocols import mbpp_chat_example
from hrm_codegen.tokenization import CodeTokenizer


def build_datasets(
    cfg: DictConfig, tokenizer: CodeTokenizer, use_cache: bool = True
) -> tuple[Dataset, Dataset]:
    """(train, validation) datasets of `cfg.data`; `use_cache=False` ignores `data.cache_dir` (writes nothing).

    data=mbpp: the MBPP splits `data.train_split` and `data.eval_split`; with `data.pack` the training split
    (after `data.train_limit`) is packed into seq_len blocks, and validation stays one example per sequence so
    its loss compares with unpacked runs; `data.prompt_format=chat` trains and validates in an instruct
    model's chat format (`MBPPDataset`'s `chat`). data=pairs: the mined pairs of `data.pairs_path` (only the
    verified ones with `data.pairs_verified_only`, those of the sources `data.pairs_sources`; after MBPP's training
    split with `data.pairs_with_mbpp_train`),
    validated on MBPP. data=corpus: the seq_len blocks of the corpus in `data.corpus_dir`,
    its last `data.eval_blocks` blocks held out for validation.
    """
    data = cfg.data
    if data.name == "mbpp":
        rows = load_mbpp(data.path)
        cache_dir = data.cache_dir if use_cache else None
        data_hash = file_sha256(data.path) if cache_dir and Path(data.path).is_file() else None
        chat = (
            partial(mbpp_chat_example, tokenizer=tokenizer.hf)
            if data.get("prompt_format") == "chat"
            else None
        )
        splits: list[Dataset] = [
            MBPPDataset(rows, split, tokenizer, data.seq_len, data.few_shot, cache_dir, data_hash, chat)
            for split in (data.train_split, data.eval_split)
        ]
    elif data.name == "pairs":
        if not data.pairs_path:
            raise ValueError(
                "data.name=pairs needs data.pairs_path: a pairs.jsonl written by scripts/build_pairs.py"
            )
        pair_rows = load_pairs(data.pairs_path)
        if data.get("pairs_verified_only"):
            pair_rows = [row for row in pair_rows if row["verified"]]
            if not pair_rows:
                raise ValueError(f"data.pairs_verified_only=true: {data.pairs_path} has no verified pair")
        if data.get("pairs_sources"):
            wanted = list(data.pairs_sources)
            found = sorted({row["source"] for row in pair_rows})
            pair_rows = [row for row in pair_rows if row["source"] in wanted]
            if not pair_rows:
                raise ValueError(
                    f"data.pairs_sources={wanted}: no pair of {data.pairs_path} has one of these sources; "
                    f"its pairs have {found}"
                )
        train: Dataset = PairsDataset(pair_rows, tokenizer, data.seq_len)
        rows = load_mbpp(data.path)  # validation on MBPP, so the loss compares with the MBPP stages
        if data.get("pairs_with_mbpp_train"):
            mbpp_train = MBPPDataset(rows, data.train_split, tokenizer, data.seq_len, data.few_shot)
            train = ConcatDataset([mbpp_train, train])
        splits = [train, MBPPDataset(rows, data.eval_split, tokenizer, data.seq_len, data.few_shot)]
    elif data.name == "corpus":
        splits = corpus_splits(data.corpus_dir, data.seq_len, data.eval_blocks, tokenizer)
    else:
        raise ValueError(
            f"data.name={data.name!r} is not a known data source; expected mbpp, pairs or corpus"
        )
    limited = [
        Subset(dataset, range(min(limit, len(dataset)))) if limit is not None else dataset  # type: ignore[arg-type]
        for dataset, limit in zip(splits, (data.train_limit, data.eval_limit), strict=True)
    ]
    if data.pack:
        return PackedDataset(limited[0], data.seq_len, tokenizer.pad_id), limited[1]
    return limited[0], limited[1]


def corpus_splits(
    corpus_dir: str | None, seq_len: int, eval_blocks: int, tokenizer: CodeTokenizer
) -> list[Dataset]:
    """[train, validation] blocks of a corpus: validation is the last `eval_blocks` blocks."""
    if not corpus_dir:
        raise ValueError(
            "data.name=corpus needs data.corpus_dir: a directory written by scripts/build_corpus.py"
        )
    corpus = CorpusDataset(corpus_dir, seq_len, tokenizer)
    if not 0 < eval_blocks < len(corpus):
        raise ValueError(
            f"data.eval_blocks={eval_blocks}: the corpus {corpus_dir} has {len(corpus)} blocks of {seq_len} tokens; "
            f"hold out between 1 and {len(corpus) - 1} of them for validation"
        )
    split = len(corpus) - eval_blocks
    return [Subset(corpus, range(split)), Subset(corpus, range(split, len(corpus)))]
