"""Learning from execution (`train.method=grpo`, experiment=rl_mbpp): TRL's GRPOTrainer in the GSPO setting trains a
tiny HRM and a tiny Llama from a run directory with the sandbox reward, writes steps `evaluate.py --ckpt` scores,
resumes after SIGKILL to the weights of an uninterrupted run, and goes on when programs time out or the sandbox
crashes. The task set (MBPP train, verified mined pairs) and the prompts TRL tokenizes are checked apart."""

import dataclasses
import importlib.machinery
import importlib.util
import json
import os
import sys
import types
from pathlib import Path

import pytest
import torch
from conftest import kill_after_checkpoint, save_step
from omegaconf import OmegaConf
from safetensors.torch import load_file

from hrm_codegen import rl, runs
from hrm_codegen.checkpoint import read_meta
from hrm_codegen.datasets.batching import encode_prompt
from hrm_codegen.datasets.mbpp import build_prompt, load_mbpp
from hrm_codegen.datasets.protocols import FormattedProblem
from hrm_codegen.datasets.tasks import build_task_set, judged_uncut
from hrm_codegen.execution import Sandbox
from hrm_codegen.families import get_family
from hrm_codegen.inference import model_config
from hrm_codegen.logging_utils import read_metrics
from hrm_codegen.tokenization import load_tokenizer
from hrm_codegen.train_config import compose_config
from hrm_codegen.training import run

# TRL and the Trainer still use the names transformers renames in v6 (gradient -> activation checkpointing).
pytestmark = pytest.mark.filterwarnings("ignore:.*is deprecated and will be removed in v6:FutureWarning")

REPO = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = REPO / "scripts" / "train_codegen.py"
EVALUATE_SCRIPT = REPO / "scripts" / "evaluate.py"
TINY = [
    "experiment=rl_mbpp",
    "train.max_steps=2",
    "train.global_batch_size=2",  # 1 prompt x 2 completions per step
    "rl.num_generations=2",
    "rl.max_completion_length=12",
    "train.ckpt_every=2",
    "train.warmup_steps=0",
    "train.lr=1e-3",
    "train.num_threads=1",
    "rl.reward_workers=2",
]


@pytest.fixture(scope="module")
def init_runs(tmp_path_factory, gpt2_dir, mbpp_path) -> dict[str, Path]:
    """Run directories of a tiny HRM and a tiny Llama (GPT-2's tokenizer), as the SFT launcher leaves them."""
    root = tmp_path_factory.mktemp("init")
    tokenizer = load_tokenizer(gpt2_dir)
    runs = {}
    for name, arch in (("hrm", "tiny"), ("llama", "transformer_tiny_params")):
        cfg = compose_config(
            [
                f"arch={arch}",
                "arch.hidden_size=32",
                f"tokenizer.name_or_path={gpt2_dir}",
                f"data.path={mbpp_path}",
            ]
        )
        torch.manual_seed(0)
        model = get_family(cfg.arch.name).build(model_config(cfg, tokenizer.vocab_size))
        saved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        saved.arch.vocab_size, saved.tokenizer.fingerprint = tokenizer.vocab_size, tokenizer.fingerprint
        save_step(root / name, 3, model, saved, tokenizer)
        runs[name] = root / name
    return runs


def overrides(init: Path, root: Path, mbpp_path: Path, name: str, *extra: str) -> list[str]:
    return [
        *TINY,
        f"train.init_from={init}",
        f"data.path={mbpp_path}",
        f"checkpoint_root={root}",
        f"run_name={name}",
        *extra,
    ]


@dataclasses.dataclass(frozen=True)
class ParityTask(FormattedProblem):
    """A task whose program passes when the completion has an even number of characters: about half the sampled
    completions of a random model pass, so the groups' rewards differ and the policy gradient moves the weights."""

    def program(self, completion: str) -> str:
        return f"assert len({completion!r}) % 2 == 0\n"


@dataclasses.dataclass(frozen=True)
class LoopingTask(FormattedProblem):
    """A task whose program never ends: the sandbox's wall-clock limit stops it."""

    def program(self, completion: str) -> str:
        return "while True:\n    pass\n"


def parity_tasks(*args, **kwargs) -> list[FormattedProblem]:
    """Eight short-prompt parity tasks (stands in for `build_task_set`)."""
    return [ParityTask(task_id=f"parity{i}", prompt=f"# task {i}\n", test_program="") for i in range(8)]


def looping_tasks(*args, **kwargs) -> list[FormattedProblem]:
    """Four short-prompt tasks whose programs loop forever (stands in for `build_task_set`)."""
    return [LoopingTask(task_id=f"loop{i}", prompt=f"# loop {i}\n", test_program="") for i in range(4)]


def step_weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / f"step_{step}" / "hf" / "model.safetensors"))


def load_evaluate():
    spec = importlib.util.spec_from_file_location("evaluate_cli", EVALUATE_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LOGGED = (
    "reward",
    "reward_std",
    "execution/pass_rate",
    "execution/solved_rate",
    "execution/timeout_rate",
    "execution/sandbox_error_rate",
    "completions/mean_length",
    "clip_ratio/region_mean",
    "entropy",
    "lr",
)


@pytest.mark.parametrize("family", ["hrm", "llama"])
def test_two_gspo_steps_from_a_run_with_the_sandbox_reward_then_evaluate_scores_the_result(
    init_runs, tmp_path, mbpp_path, family
):
    root = tmp_path / "ck"
    result = run(compose_config(overrides(init_runs[family], root, mbpp_path, "rl", "data.train_limit=4")))
    run_dir = root / "rl"
    assert result["step"] == 2 and (run_dir / "latest").read_text().strip() == "step_2"
    step = run_dir / "step_2"
    meta = read_meta(step)  # every file verified, the Trainer's checkpoint included
    assert {
        "trainer/optimizer.pt",
        "trainer/scheduler.pt",
        "trainer/rng_state.pth",
        "hf/model.safetensors",
    } <= set(meta["files"])
    saved = OmegaConf.load(step / "config.yaml")
    init = OmegaConf.load(init_runs[family] / "step_3" / "config.yaml")
    assert (
        saved.train.method == "grpo" and saved.rl.algorithm == "gspo" and saved.data.prompt_format == "native"
    )
    assert saved.arch == init.arch  # the init run's arch (train.arch_from_init)
    # the export keeps the config as it was loaded (TRL turns the cache off and sets the pad id while training)
    assert json.loads((step / "hf" / "config.json").read_text()) == json.loads(
        (init_runs[family] / "step_3" / "hf" / "config.json").read_text()
    )
    records = read_metrics(run_dir)
    logged = [r for r in records if "reward" in r]
    assert [r["step"] for r in logged] == [1, 2]
    for record in logged:
        assert set(LOGGED) <= set(record), set(LOGGED) - set(record)
        assert record["execution/sandbox_error_rate"] == 0.0  # every completion was judged by running it
        assert record["completions/mean_length"] > 0
    assert records[-1]["event"] == "done"
    cli = load_evaluate()
    args = ["--ckpt", str(run_dir), "--mbpp", str(mbpp_path), "--limit", "2", "--max-new-tokens", "4"]
    out = tmp_path / "eval"
    summary = cli.run(cli.parse_args([*args, "--no-progress", "--workers", "2", "--output", str(out)]))
    assert summary["num_problems"] == 2 and summary["pass_at_k"]["1"] == 0.0
    assert len((out / "samples.jsonl").read_text().splitlines()) == 2


def test_sigkill_then_resume_and_a_stop_after_then_resume_equal_an_uninterrupted_run(
    init_runs, tmp_path, mbpp_path, monkeypatch
):
    """Reference and resumed runs in this process, the killed one through the launcher in a child process; all
    three on the parity tasks, whose rewards differ, so the weights move at every step."""
    monkeypatch.setattr(rl, "build_task_set", parity_tasks)
    root = tmp_path / "ck"
    args = overrides(
        init_runs["hrm"],
        root,
        mbpp_path,
        "{name}",
        "train.max_steps=4",
        "rl.num_generations=4",
        "train.global_batch_size=4",
    )
    run(compose_config([a.format(name="ref") for a in args]))
    reference = root / "ref"
    at_2, at_4 = step_weights(reference, 2), step_weights(reference, 4)
    assert not all(torch.equal(at_2[name], at_4[name]) for name in at_4)  # the parity reward moved the policy
    wrapper = tmp_path / "launch.py"
    wrapper.write_text(
        "import runpy, sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "import test_rl\nfrom hrm_codegen import rl\n"
        "rl.build_task_set = test_rl.parity_tasks\n"
        f"sys.argv = [{str(TRAIN_SCRIPT)!r}, *sys.argv[1:]]\n"
        f"runpy.run_path({str(TRAIN_SCRIPT)!r}, run_name='__main__')\n"
    )
    killed = root / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    command = [sys.executable, str(wrapper), *(a.format(name="killed") for a in args)]
    kill_after_checkpoint(command, killed / "step_2", tmp_path, env)
    assert (killed / "latest").read_text().strip() == "step_2" and not (killed / "step_4").exists()
    result = run(compose_config([*(a.format(name="killed") for a in args), "resume=auto"]))
    assert result["step"] == 4
    resumed, uninterrupted = step_weights(killed, 4), step_weights(reference, 4)
    assert resumed.keys() == uninterrupted.keys()
    for name, tensor in uninterrupted.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=1e-6, msg=name)
    logged = [r for r in read_metrics(killed) if "reward" in r]
    assert [r["step"] for r in logged if r["step"] > 2] == [3, 4]  # the resumed run went on from step 3

    # train.stop_after=2: the 4-step run ends at a step-2 checkpoint on its 4-step schedule, counted finished;
    # resuming with the stop trains nothing, without it the run goes on to the uninterrupted weights
    stop = [*(a.format(name="stopped") for a in args), "train.stop_after=2"]
    assert run(compose_config(stop))["step"] == 2
    stopped = root / "stopped"
    assert (stopped / "latest").read_text().strip() == "step_2" and not (stopped / "step_3").exists()
    assert runs.finished(stopped) and runs.read_train_state(stopped / "step_2")["total_steps"] == 4
    for name, tensor in at_2.items():
        torch.testing.assert_close(step_weights(stopped, 2)[name], tensor, rtol=0, atol=1e-6, msg=name)

    def lrs(run_dir: Path) -> dict[int, float]:
        return {r["step"]: r["lr"] for r in read_metrics(run_dir) if "lr" in r}

    assert lrs(stopped) == {s: lr for s, lr in lrs(reference).items() if s <= 2}
    assert run(compose_config([*stop, "resume=auto"]))["step"] == 2 and not (stopped / "step_3").exists()
    assert run(compose_config([*stop[:-1], "resume=auto"]))["step"] == 4
    for name, tensor in uninterrupted.items():
        torch.testing.assert_close(step_weights(stopped, 4)[name], tensor, rtol=0, atol=1e-6, msg=name)


def test_timeouts_and_a_crashed_sandbox_score_0_and_the_run_goes_on(
    init_runs, tmp_path, mbpp_path, monkeypatch
):
    """The first reward call meets a crashed sandbox, the second programs that loop past the 1 s limit: both score
    0, the run reaches its last step, and the rates reach metrics.jsonl and wandb."""
    monkeypatch.setattr(rl, "build_task_set", looping_tasks)
    calls = {"n": 0}
    submit = Sandbox.submit

    def crash_first_call(self, program):
        calls["n"] += 1
        if calls["n"] == 1:
            raise BrokenPipeError("the sandbox runner died")
        return submit(self, program)

    monkeypatch.setattr(Sandbox, "submit", crash_first_call)
    logged: list[tuple[dict, int]] = []  # what reaches wandb (a stand-in module: offline, no key)
    fake = types.ModuleType("wandb")
    fake.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    fake.init = lambda **kwargs: types.SimpleNamespace(
        log=lambda fields, step: logged.append((fields, step)), finish=lambda: None
    )
    monkeypatch.setitem(sys.modules, "wandb", fake)
    root = tmp_path / "ck"
    cfg = overrides(init_runs["hrm"], root, mbpp_path, "loops", "rl.reward_timeout_s=1", "logger=wandb")
    result = run(compose_config(cfg))
    assert result["step"] == 2 and (root / "loops" / "step_2").is_dir()
    first, second = (r for r in read_metrics(root / "loops") if "reward" in r)
    assert first["reward"] == 0.0 and first["execution/sandbox_error_rate"] == 1.0
    assert second["reward"] == 0.0 and second["execution/timeout_rate"] == 1.0
    assert [(fields["execution/timeout_rate"], step) for fields, step in logged if "reward" in fields] == [
        (0.0, 1),
        (1.0, 2),
    ]


def test_dry_run_reports_the_set_up_and_writes_nothing(init_runs, tmp_path, mbpp_path):
    root = tmp_path / "ck"
    report = run(compose_config([*overrides(init_runs["llama"], root, mbpp_path, "dry"), "dry_run=true"]))
    assert isinstance(report, str)
    # MBPP train's 374 tasks, less 7 whose prompts leave fewer than 12 of the model's 256 positions
    assert "tasks: 367 from ['mbpp'] in prompt format native (few_shot 0); 7 dropped" in report, report
    assert "2 completions per optimizer step = 1 prompt(s) x 2" in report, report
    assert not root.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["train.global_batch_size=6", "rl.num_generations=4"], "not a multiple of rl.num_generations=4"),
        (["rl.algorithm=ppo"], "rl.algorithm must be one of"),
        (["train.init_from=null"], "train.method=grpo starts from a trained model"),
        (["+train.arch_overrides.prefix_lm=true"], "cannot train arch.prefix_lm=true"),
        (
            ["rl.updates_per_generation=3"],
            "train.ckpt_every=2 must be a multiple of rl.updates_per_generation=3",
        ),
        (["train.cycles_schedule=[[0.0,1,1]]"], "train.cycles_schedule is for train.method=sft"),
        (["train.stop_after=0"], "train.stop_after must be >= 1 or null"),
    ],
)
def test_bad_settings_are_one_clear_error(init_runs, tmp_path, mbpp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        run(compose_config([*overrides(init_runs["hrm"], tmp_path, mbpp_path, "bad"), *extra]))


def test_prompts_encode_to_the_ids_evaluation_feeds_the_model_and_long_ones_are_dropped(gpt2_dir, mbpp_path):
    tokenizer = load_tokenizer(gpt2_dir)
    problems = build_task_set(["mbpp"], "native", mbpp_path=mbpp_path, limit=20)
    dataset, dropped = rl.prompt_dataset(problems, tokenizer, "native", max_prompt_tokens=150)
    kept = {p.task_id: p for p in problems}
    assert len(dataset) + len(dropped) == 20 and dataset and dropped
    for text, task_id in zip(dataset["prompt"], dataset["task_id"], strict=True):
        ids = tokenizer.hf(text)["input_ids"]  # what TRL's GRPOTrainer does with the prompt column
        assert ids == encode_prompt(tokenizer, kept[task_id].prompt) and len(ids) <= 150
    assert all(len(encode_prompt(tokenizer, kept[t].prompt)) > 150 for t in dropped)


def test_task_set_of_mbpp_train_and_verified_pairs(mbpp_path, tmp_path):
    pair = {"text": "Double a number.", "code": "def double(x):\n    return 2 * x\n", "source": "test"}
    rows = [
        {**pair, "task_id": "pair/double", "test_list": ["assert double(2) == 4"], "verified": True},
        {**pair, "task_id": "pair/unverified", "test_list": [], "verified": False},
    ]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(row) + "\n" for row in rows))
    tasks = build_task_set(["mbpp", "pairs"], "native", mbpp_path=mbpp_path, pairs_path=pairs)
    mbpp = [row for row in load_mbpp(mbpp_path) if 601 <= row["task_id"] <= 974]
    assert [t.task_id for t in tasks] == [*(str(row["task_id"]) for row in mbpp), "pair/double"]
    assert tasks[0].prompt == build_prompt(mbpp[0]) and tasks[-1].prompt == build_prompt(rows[0])
    judged = judged_uncut(tasks[-1])
    assert (
        judged.program(pair["code"] + "\nassert double(3) == 7") == pair["code"] + "\nassert double(2) == 4\n"
    )
    clash = tmp_path / "clash.jsonl"
    clash.write_text(json.dumps({**rows[0], "task_id": "601"}) + "\n")
    with pytest.raises(ValueError, match="task id '601' occurs twice"):
        build_task_set(["mbpp", "pairs"], mbpp_path=mbpp_path, pairs_path=clash)
    with pytest.raises(ValueError, match="expected some of"):
        build_task_set(["humaneval"], mbpp_path=mbpp_path)
    with pytest.raises(ValueError, match="needs a pairs.jsonl"):
        build_task_set(["pairs"])
