"""Shared fixtures: paths to the read-only material in ../shared and a tiny HRM config."""

import os
from pathlib import Path

import pytest

if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    # pytest -n N: each worker (and the runs it starts in subprocesses) gets one thread, so N workers share the
    # cores instead of each spinning up torch's default of one thread per core
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_name] = "1"
    import torch

    torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def load_script(name: str):
    """scripts/<name>.py imported as a module (its `main(argv)` callable in-process)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"{name}_script", REPO / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _shared(relative: str) -> Path:
    path = SHARED / relative
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the tests expect ../shared beside the repository")
    return path


@pytest.fixture(scope="session")
def gpt2_dir() -> Path:
    """The local GPT-2 tokenizer files."""
    return _shared("tokenizers/gpt2")


@pytest.fixture(scope="session")
def mbpp_path() -> Path:
    """The local MBPP jsonl (974 tasks)."""
    return _shared("data/mbpp/mbpp.jsonl")


TINY_HRM = {
    "vocab_size": 97,
    "seq_len": 64,
    "H_cycles": 2,
    "L_cycles": 2,
    "H_layers": 1,
    "L_layers": 1,
    "hidden_size": 32,
    "num_heads": 4,
    "expansion": 2.0,
    "pos_encodings": "rope",
    "halt_max_steps": 1,
    "forward_dtype": "float32",
}


@pytest.fixture
def tiny_hrm_config() -> dict:
    """A CPU-sized HRM config (a fresh copy per test)."""
    return dict(TINY_HRM)


def legacy_state_dict(state: dict) -> dict:
    """An HRM state dict under the names of weights saved before the backbone / head split (upstream's: all under
    `inner.`, the LM head included)."""
    return {"inner." + key.removeprefix("model."): value for key, value in state.items()}


def kill_after_checkpoint(
    command: list[str], step_dir: Path, cwd: Path, env: dict, timeout: float = 300
) -> None:
    """Start the training `command`, SIGKILL it once `step_dir` has been written (a resume test's interruption)."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while not step_dir.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, f"{step_dir} was not written before the run ended"


def save_step(run_dir: Path, step: int, model, config, tokenizer, extra_files=None, **kwargs) -> Path:
    """A checkpoint step of `model`, its weights written by its family (`config["arch"]["name"]`) as in training,
    then whatever `extra_files(directory)` adds."""
    from hrm_codegen.checkpoint import save_checkpoint
    from hrm_codegen.families import get_family

    family = get_family(config["arch"]["name"])

    def files(directory: Path) -> None:
        family.save_weights(model, model.state_dict(), tokenizer, directory)
        if extra_files is not None:
            extra_files(directory)

    return save_checkpoint(run_dir, step, config=config, tokenizer=tokenizer, extra_files=files, **kwargs)


def tiny_llama(vocab_size: int = 97, **overrides):
    """A CPU-sized transformers Llama (2 layers, GQA), freshly initialised from torch's current RNG state."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(LlamaConfig(**{**config, **overrides}))
