"""train.compile=true: the compiled training forward gives the eager losses (CPU, inductor)."""

import pytest

from hrm_codegen.train_config import compose_config
from hrm_codegen.training import Trainer


def _first_losses(gpt2_dir, mbpp_path, compiled: bool, arch: list[str]) -> list[float]:
    cfg = compose_config(
        [
            *arch,
            "arch.hidden_size=32",
            "arch.seq_len=256",
            f"data.path={mbpp_path}",
            f"tokenizer.name_or_path={gpt2_dir}",
            "train.global_batch_size=2",
            "train.max_steps=3",
            "train.num_threads=1",
            "data.train_limit=8",
            "data.eval_limit=2",
            "dry_run=true",  # builds everything, writes nothing
            f"train.compile={str(compiled).lower()}",
        ]
    )
    trainer = Trainer(cfg)
    return [trainer.train_step()["loss"] for _ in range(3)]  # type: ignore[index]


@pytest.mark.slow
def test_compiled_training_losses_equal_eager_within_1e_4(gpt2_dir, mbpp_path):
    """Tolerance 1e-4 (absolute, fp32): inductor fuses and reorders float sums, so bits may differ."""
    eager = _first_losses(gpt2_dir, mbpp_path, False, ["arch=tiny"])
    compiled = _first_losses(gpt2_dir, mbpp_path, True, ["arch=tiny"])
    assert eager[0] > eager[-1]  # the steps really train
    assert compiled == pytest.approx(eager, abs=1e-4)
