"""The training launcher: dry run, reproducibility, learning, resume, the non-finite guard, data parallelism."""

import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from conftest import kill_after_checkpoint
from safetensors.torch import load_file, save_file

from hrm_codegen import families
from hrm_codegen.checkpoint import read_meta
from hrm_codegen.datasets.assembly import build_datasets
from hrm_codegen.datasets.batching import BatchOrder, PackedDataset
from hrm_codegen.inference import load_model_for_inference
from hrm_codegen.logging_utils import MetricsLogger, read_metrics
from hrm_codegen.models import HierarchicalReasoningModel_ACTV1, baseline
from hrm_codegen.optim import build_optimizer, build_scheduler
from hrm_codegen.tokenization import load_tokenizer
from hrm_codegen.train_config import compose_config, validate_config
from hrm_codegen.training import Trainer, TrainingStopped, run

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "train_codegen.py"
FAST = [
    "arch=tiny",
    "arch.hidden_size=32",
    "arch.seq_len=128",
    "train.global_batch_size=4",
    "train.warmup_steps=1",
    "train.lr=3e-3",
    "train.log_every=1",
    "train.eval_every=0",
    "train.num_threads=1",
    "data.eval_limit=8",
    "train.keep_last=0",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}


@pytest.fixture
def paths(gpt2_dir, mbpp_path, tmp_path):
    """Overrides that point the run at the shared data and a temporary checkpoint root."""
    return [
        f"data.path={mbpp_path}",
        f"tokenizer.name_or_path={gpt2_dir}",
        f"checkpoint_root={tmp_path / 'ck'}",
    ]


def _train(paths, *overrides):
    return run(compose_config([*FAST, *paths, *overrides]))


def _weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / f"step_{step}" / "hf" / "model.safetensors"))


def _script(args, cwd, launcher=(sys.executable,), timeout=600):
    return subprocess.run(
        [*launcher, str(SCRIPT), *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout
    )


def _train_losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir) if "loss" in r]


def test_batch_order_is_deterministic_per_epoch_and_drops_the_last_partial_batch():
    order = BatchOrder(10, 4, seed=3)
    assert order.steps_per_epoch == 2
    first = [order.global_batch(s) for s in range(4)]
    again = BatchOrder(10, 4, seed=3)
    assert [again.global_batch(s) for s in (3, 0, 2, 1)] == [first[3], first[0], first[2], first[1]]
    assert len(set(first[0]) | set(first[1])) == 8  # an epoch has no repeats
    assert first[:2] != first[2:]  # each epoch is a new shuffle
    with pytest.raises(ValueError, match="larger than the 3 training examples"):
        BatchOrder(3, 4, seed=0)


@pytest.mark.slow
def test_dry_run_in_both_cli_forms_writes_nothing(tmp_path, paths):
    """Hydra form and the seed spec's `--config PATH --dry-run` form: exit 0, counts printed, nothing written."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    data = [p for p in paths if not p.startswith("checkpoint_root")]
    hydra_form = _script(
        ["dry_run=true", "arch=tiny", "arch.hidden_size=32", "arch.enable_q_head=true", *data], cwd
    )
    seed_form = _script(
        ["--config", str(REPO / "configs" / "codegen_base.yaml"), "--dry-run", "arch=tiny", *data], cwd
    )
    for result in (hydra_form, seed_form):
        assert result.returncode == 0, result.stderr
        assert "parameters by component" in result.stdout and "lm_head" in result.stdout
        assert (
            "one batch [8," in result.stdout and "loss 1" in result.stdout
        )  # ~ln(50257) = 10.8 at the start
    assert "enable_q_head=true: the Q-head adds 66 parameters" in hydra_form.stdout  # 2 x 32 + 2
    assert (
        "enable_q_head=false: no Q-head; turning it on adds 130 parameters" in seed_form.stdout
    )  # 2 x 64 + 2
    assert list(cwd.iterdir()) == []


@pytest.mark.slow
def test_fixed_seed_is_bitwise_reproducible_and_logs_metrics(paths, tmp_path):
    a = _train(paths, "run_name=a", "train.max_steps=3", "train.eval_every=3")
    b = _train(paths, "run_name=b", "train.max_steps=3", "train.eval_every=3")
    c = _train(paths, "run_name=c", "train.max_steps=3", "seed=1")
    wa, wb, wc = (_weights(Path(r["run_dir"]), 3) for r in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)  # the seed matters
    records = read_metrics(Path(a["run_dir"]))
    assert [r["step"] for r in records if "val_loss" in r] == [0, 3]
    train_records = [r for r in records if "loss" in r]
    assert [r["step"] for r in train_records] == [1, 2, 3]
    assert all(r["tokens_per_s"] > 0 and r["lr"] > 0 for r in train_records)
    with pytest.raises(ValueError, match="already holds checkpoints .* resume=auto"):
        _train(paths, "run_name=a", "train.max_steps=3")


def test_gradient_accumulation_matches_one_big_batch(paths):
    one = _train(paths, "run_name=one", "train.max_steps=2")
    acc = _train(paths, "run_name=acc", "train.max_steps=2", "train.grad_accum=2")
    assert _train_losses(Path(one["run_dir"])) == pytest.approx(_train_losses(Path(acc["run_dir"])), rel=1e-5)
    w1, w2 = _weights(Path(one["run_dir"]), 2), _weights(Path(acc["run_dir"]), 2)
    assert all(torch.allclose(w1[k], w2[k], atol=1e-4) for k in w1)  # Adam amplifies ~0 gradients


def _nan_after(monkeypatch, good_calls: int):
    """Make every loss after the first `good_calls` forward passes NaN."""
    calls = {"n": 0}
    real = families.hrm.codegen_loss

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] > good_calls:
            out.lm_sum = out.lm_sum * float("nan")
        return out

    monkeypatch.setattr(families.hrm, "codegen_loss", poisoned)  # the HRM family's training loss


def test_nonfinite_steps_are_skipped(paths, monkeypatch, caplog):
    _nan_after(monkeypatch, good_calls=2)
    result = _train(
        paths, "run_name=skip", "train.max_steps=4", "train.ckpt_every=2", "train.max_nonfinite_steps=5"
    )
    run_dir = Path(result["run_dir"])
    assert "non-finite loss; skipped the update" in caplog.text
    events = [r for r in read_metrics(run_dir) if r.get("event") == "nonfinite"]
    assert [(e["step"], e["streak"]) for e in events] == [(3, 1), (4, 2)]
    before, after = _weights(run_dir, 2), _weights(run_dir, 4)
    assert all(torch.equal(before[k], after[k]) for k in before)  # the skipped steps changed nothing


def test_nonfinite_streak_stops_the_run_and_keeps_the_last_good_checkpoint(paths, monkeypatch, tmp_path):
    _nan_after(monkeypatch, good_calls=2)
    with pytest.raises(
        TrainingStopped, match=r"3 steps in a row had a non-finite loss .* last good checkpoint .*step_2"
    ):
        _train(
            paths, "run_name=stop", "train.max_steps=10", "train.ckpt_every=2", "train.max_nonfinite_steps=3"
        )
    run_dir = tmp_path / "ck" / "stop"
    assert (run_dir / "latest").read_text().strip() == "step_2"
    assert [p.name for p in sorted(run_dir.glob("step_*"))] == ["step_2"]
    model, _ = load_model_for_inference(run_dir)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_deep_supervision_carry_persists_and_resumes_exactly(paths, tmp_path):
    """halt_max_steps > 1 with the Q-head: the ACT carry is checkpointed and a resume continues it bit for bit."""
    act = ["arch.halt_max_steps=2", "arch.enable_q_head=true", "train.max_steps=4", "train.ckpt_every=2"]
    full = _train(paths, "run_name=full", *act)
    full_dir = Path(full["run_dir"])
    assert (full_dir / "step_2" / "family_state.safetensors").is_file()
    records = [r for r in read_metrics(full_dir) if "loss" in r]
    assert all("q_halt_loss" in r and "q_continue_loss" in r for r in records)
    resumed_dir = tmp_path / "ck" / "resumed"
    resumed_dir.mkdir()
    shutil.copytree(full_dir / "step_2", resumed_dir / "step_2")
    (resumed_dir / "latest").write_text("step_2\n")
    _train(paths, "run_name=resumed", "resume=auto", *act)
    a, b = _weights(full_dir, 4), _weights(resumed_dir, 4)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_foreign_or_truncated_checkpoint_ends_with_one_line_error(paths, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "pytorch_model.bin").write_bytes(b"not ours")
    result = _script([*FAST, *paths, "run_name=x", f"resume={foreign}"], tmp_path)
    assert result.returncode == 1
    assert (
        result.stderr.strip().splitlines()[-1].startswith("error: ") and "not a checkpoint" in result.stderr
    )
    assert "Traceback" not in result.stderr

    save_file({"transformer.wte.weight": torch.zeros(2, 2)}, str(tmp_path / "gpt2.safetensors"))
    result = _script(
        [*FAST, *paths, "run_name=y", f"train.init_from={tmp_path / 'gpt2.safetensors'}"], tmp_path
    )
    assert result.returncode == 1 and "do not fit" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_bf16_mixed_precision_with_accumulation_runs(paths, tmp_path):
    result = _script(
        [
            *FAST,
            *paths,
            "run_name=bf16",
            "train.mixed_precision=bf16",
            "train.grad_accum=2",
            "train.max_steps=2",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    losses = _train_losses(tmp_path / "ck" / "bf16")
    assert len(losses) == 2 and all(0 < loss < 20 for loss in losses)


def test_optimizer_groups_and_warmup_cosine_schedule(tiny_hrm_config):
    """AdamW (0.9, 0.95), decay 0.1 on matrices only (not embeddings, biases); warmup then cosine to min_lr."""
    model = HierarchicalReasoningModel_ACTV1({**tiny_hrm_config, "enable_q_head": True})
    optimizer = build_optimizer(model, lr=1.0)
    decayed, undecayed = ({id(p) for p in g["params"]} for g in optimizer.param_groups)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]
    assert optimizer.defaults["betas"] == (0.9, 0.95)
    backbone = model.model
    assert id(backbone.embed_tokens.embedding_weight) in undecayed and id(backbone.q_head.bias) in undecayed
    assert id(model.lm_head.weight) in decayed and id(backbone.q_head.weight) in decayed
    assert len(decayed | undecayed) == len(list(model.parameters()))
    with_embeddings = build_optimizer(model, lr=1.0, decay_embeddings=True, decay_norms_and_biases=True)
    assert with_embeddings.param_groups[1]["params"] == []
    scheduler = build_scheduler(optimizer, warmup_steps=4, total_steps=14, min_lr_ratio=0.1)
    lrs = []
    for _ in range(16):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4] == pytest.approx(1.0) and lrs[9] == pytest.approx(0.55)  # half-way down the cosine
    assert lrs[14:] == pytest.approx([0.1, 0.1])
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:], strict=False))


def test_metrics_logger_jsonl_none_and_offline_wandb(tmp_path, monkeypatch):
    """jsonl appends records; none writes nothing; wandb (a stand-in module) runs offline without a key."""
    MetricsLogger("none", tmp_path / "none").log({"step": 1, "loss": 2.0})
    assert not (tmp_path / "none").exists()
    calls: dict = {"log": []}
    fake = types.ModuleType("wandb")
    fake.init = lambda **kwargs: (
        calls.update(init=kwargs)
        or types.SimpleNamespace(
            log=lambda fields, step: calls["log"].append((fields, step)),
            finish=lambda: calls.update(finished=True),
        )
    )
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    logger = MetricsLogger("wandb", tmp_path / "run", {"seed": 0}, run_name="r", project="p")
    logger.log({"step": 3, "loss": 1.5, "event": "x"})
    logger.close()
    assert calls["init"]["mode"] == "offline" and calls["init"]["config"] == {"seed": 0}
    assert calls["log"] == [({"loss": 1.5}, 3)] and calls["finished"]
    assert read_metrics(tmp_path / "run") == [{"step": 3, "loss": 1.5, "event": "x"}]
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ValueError, match="pip install"):
        MetricsLogger("wandb", tmp_path / "run")


@pytest.mark.slow
def test_one_epoch_on_mbpp_train_lowers_the_loss_by_more_than_10_percent(paths):
    result = _train(
        paths,
        "run_name=epoch",
        "arch.seq_len=160",
        "train.global_batch_size=8",
        "train.epochs=1",
        "train.eval_every=1000",
        "data.eval_limit=16",
        "train.warmup_steps=2",
        "train.ckpt_every=1000",
    )
    records = read_metrics(Path(result["run_dir"]))
    val = [r["val_loss"] for r in records if "val_loss" in r]
    steps = [r["step"] for r in records if "loss" in r]
    assert steps[-1] == 163 // 8  # one epoch of the 163 train tasks that fit 160 tokens
    assert len(val) == 2 and val[1] < 0.9 * val[0], val


@pytest.mark.slow
def test_overfitting_eight_examples_drives_the_loss_under_0_1(paths):
    result = _train(
        paths,
        "run_name=overfit",
        "arch.hidden_size=64",
        "data.train_limit=8",
        "train.global_batch_size=8",
        "train.max_steps=40",
        "train.lr=1e-2",
        "train.warmup_steps=5",
        "train.ckpt_every=1000",
    )
    losses = _train_losses(Path(result["run_dir"]))
    assert losses[0] > 5 and losses[-1] < 0.1, losses


@pytest.mark.slow
def test_sigkill_between_checkpoints_then_resume_equals_an_uninterrupted_run(paths, tmp_path):
    """Kill the real script with SIGKILL after its first checkpoint, resume=auto, compare final weights bitwise."""
    args = [*FAST, *paths, "train.global_batch_size=2", "train.max_steps=24", "train.ckpt_every=6"]
    reference = _script([*args, "run_name=ref"], tmp_path)
    assert reference.returncode == 0, reference.stderr
    killed_dir = tmp_path / "ck" / "killed"
    kill_after_checkpoint(
        [sys.executable, str(SCRIPT), *args, "run_name=killed"], killed_dir / "step_6", tmp_path, ENV
    )
    assert (killed_dir / "step_6").exists() and not (killed_dir / "step_24").exists()
    interrupted_at = read_meta(killed_dir / (killed_dir / "latest").read_text().strip())["step"]
    assert interrupted_at < 24
    resumed = _script([*args, "run_name=killed", "resume=auto"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert (killed_dir / "step_24" / "hf" / "model.safetensors").read_bytes() == (
        tmp_path / "ck" / "ref" / "step_24" / "hf" / "model.safetensors"
    ).read_bytes()


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(paths, tmp_path):
    """`accelerate launch` with 2 CPU processes (gloo): replicas stay identical and losses match one process."""
    args = [*FAST, *paths, "train.max_steps=3", "train.eval_every=3"]
    single = _script([*args, "run_name=single"], tmp_path)
    assert single.returncode == 0, single.stderr
    launcher = (
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    )
    double = _script([*args, "run_name=double"], tmp_path, launcher=launcher)
    assert double.returncode == 0, double.stderr
    single_dir, double_dir = tmp_path / "ck" / "single", tmp_path / "ck" / "double"
    done = [r for r in read_metrics(double_dir) if r.get("event") == "done"][0]
    assert len(done["replica_param_sha256"]) == 2 and len(set(done["replica_param_sha256"])) == 1
    assert _train_losses(double_dir) == pytest.approx(_train_losses(single_dir), rel=1e-5)
    val = [[r["val_loss"] for r in read_metrics(d) if "val_loss" in r] for d in (single_dir, double_dir)]
    assert val[0] == pytest.approx(val[1], rel=1e-5)
    w1, w2 = _weights(single_dir, 3), _weights(double_dir, 3)
    assert all(torch.allclose(w1[k], w2[k], atol=1e-4) for k in w1)


# -- data.pack: the MBPP training split packed into seq_len blocks

PACK = ["data.pack=true", "arch.seq_len=512"]  # at 512 tokens most blocks hold two or three MBPP examples
FAST_ANY_ARCH = [o for o in FAST if o != "arch=tiny"]


def test_pack_training_runs_the_loss_falls_and_tokens_seen_counts_real_tokens(paths):
    """Four examples pack into two blocks; every step trains on both, and tokens_seen grows by their tokens."""
    overrides = [*PACK, "data.train_limit=4", "train.global_batch_size=2"]
    result = _train(paths, *overrides, "run_name=packed", "train.max_steps=8")
    records = [r for r in read_metrics(Path(result["run_dir"])) if "loss" in r]
    losses = [r["loss"] for r in records]
    assert losses[-1] < 0.9 * losses[0], losses
    cfg = compose_config([*FAST, *paths, *overrides, "data.pack=false"])
    examples, _ = build_datasets(cfg, load_tokenizer(cfg.tokenizer.name_or_path), use_cache=False)
    real_tokens = sum(len(examples[i]["input_ids"]) for i in range(len(examples)))  # type: ignore[arg-type]
    assert real_tokens < 2 * 512  # so counting the padding of the two blocks would fail below
    assert [r["tokens_seen"] for r in records] == [step * real_tokens for step in range(1, 9)]


def test_pack_batches_hold_more_real_tokens_per_sequence_and_validation_stays_unpacked(paths):
    def first_epoch(pack: str) -> tuple[Trainer, int, int]:
        cfg = compose_config(
            [*FAST, *paths, *PACK, f"data.pack={pack}", "data.train_limit=40", "dry_run=true"]
        )
        trainer = Trainer(cfg)
        batches = [b for step in range(trainer.order.steps_per_epoch) for b in trainer._micro_batches(step)]
        return (
            trainer,
            sum(int(b["attention_mask"].sum()) for b in batches),
            sum(len(b["input_ids"]) for b in batches),
        )

    packed, packed_tokens, packed_rows = first_epoch("true")
    plain, plain_tokens, plain_rows = first_epoch("false")
    assert isinstance(packed.train_data, PackedDataset) and packed.train_data.num_examples == 40
    assert len(packed.train_data) < 40 and plain.order.num_examples == 40
    assert packed_tokens / packed_rows > 1.5 * plain_tokens / plain_rows
    blocks = [packed.train_data[i] for i in range(len(packed.train_data))]
    assert sum(int(b["attention_mask"].sum()) for b in blocks) == sum(
        len(plain.train_data[i]["input_ids"])
        for i in range(40)  # every token of every example, no more
    )
    assert sum(int(b["segment_ids"].max()) + 1 for b in blocks) == 40
    for trainer in (packed, plain):  # validation: one example per sequence either way
        assert len(trainer.eval_data) == 8 and "segment_ids" not in trainer.eval_data[0]  # type: ignore[arg-type]
    report = packed.dry_run()
    assert f"{len(blocks)} packed train blocks (40 examples) / 8 validation examples" in report


@pytest.mark.parametrize(
    "arch",
    [["arch=tiny"], ["arch=tiny", "arch.halt_max_steps=2"], ["arch=transformer_tiny_params"]],
    ids=["hrm", "hrm_deep_supervision", "llama"],
)
def test_pack_training_step_never_attends_across_examples(paths, monkeypatch, arch):
    """The logits the training step computes for a packed block equal each example's logits alone.

    With halt_max_steps=2 the second step continues the persisted carry (segment 2 on the same blocks); lr=0
    keeps the weights, so the references are the examples alone after one and after two segments.
    """
    overrides = [*FAST_ANY_ARCH, *paths, *PACK, *arch, "data.train_limit=4", "train.global_batch_size=2"]
    trainer = Trainer(compose_config([*overrides, "train.lr=0", "dry_run=true"]))
    batch = next(trainer._micro_batches(0))
    assert int(batch["segment_ids"].max()) >= 1  # a block really holds several examples
    model = trainer.accelerator.unwrap_model(trainer.model)
    segments = trainer.model_config["halt_max_steps"] if trainer.family.name == "hrm" else 1
    logits: list[torch.Tensor] = []
    real_loss = families.base.codegen_loss

    def recording_loss(outputs, labels, loss_type):
        logits.append(outputs["logits"].detach())
        return real_loss(outputs, labels, loss_type)

    monkeypatch.setattr(families.hrm, "codegen_loss", recording_loss)
    monkeypatch.setattr(families.base, "codegen_loss", recording_loss)
    for _ in range(segments):
        trainer.train_step()
    assert len(logits) == segments
    with torch.no_grad():
        for row in range(batch["input_ids"].shape[0]):
            for segment in range(int(batch["segment_ids"][row].max()) + 1):
                where = batch["segment_ids"][row] == segment
                alone = batch["input_ids"][row, where][None]
                for k in range(1, segments + 1):
                    if trainer.family.name == "hrm":
                        expected = model.lm_forward(alone, num_segments=k)
                    else:
                        expected = model(input_ids=alone).logits
                    torch.testing.assert_close(
                        logits[k - 1][row, where][None], expected, atol=1e-5, rtol=1e-5
                    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["arch=tiny", "data=corpus"],
            r"data.pack=true is for data=mbpp or data=pairs; data=corpus already trains on dense",
        ),
        (
            ["arch=tiny", "arch.enable_q_head=true", "arch.halt_max_steps=4"],
            r"arch.enable_q_head=true: the Q-head",
        ),
        (["arch=tiny", "arch.enable_q_head=true"], r"arch.name=hrm with arch.enable_q_head=true: the Q-head"),
    ],
)
def test_pack_refuses_what_it_cannot_keep_apart_with_one_line(overrides, message):
    validate_config(compose_config(overrides))  # fine without data.pack
    with pytest.raises(ValueError, match=message) as err:
        validate_config(compose_config([*overrides, "data.pack=true"]))
    assert "\n" not in str(err.value) and "data.pack=true" in str(err.value)


def test_pack_refuses_the_baseline_where_transformers_would_not_keep_examples_apart(monkeypatch):
    llama = ["arch=transformer_tiny_params", "data.pack=true"]
    validate_config(compose_config(llama))  # sdpa, and the installed transformers masks packed positions
    with pytest.raises(
        ValueError, match=r"arch.name=transformer needs arch.attn_backend auto, sdpa or eager"
    ):
        validate_config(compose_config([*llama, "arch.attn_backend=flash_attn"]))
    monkeypatch.setattr(baseline, "masks_packed_positions", lambda: False)
    with pytest.raises(
        ValueError, match=r"data.pack=true with arch.name=transformer: the installed transformers"
    ):
        validate_config(compose_config(llama))


def test_pack_is_accepted_where_examples_stay_apart():
    validate_config(compose_config(["arch=tiny", "arch.halt_max_steps=4", "data.pack=true"]))
