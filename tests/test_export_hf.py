"""The HRM's steps and exports are save_pretrained directories: `AutoModelForCausalLM.from_pretrained(<step>/hf)`
gives the HRM after `import hrm_codegen`; scripts/export_hf.py writes a directory that plain transformers loads
with `trust_remote_code=True` where hrm_codegen cannot be imported (the package's model files, shipped as they
are), with the project's logits and greedy/beam tokens; the check of the logits holds in every dtype."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import cast

import pytest
import torch
from conftest import save_step

from hrm_codegen.generation import generate
from hrm_codegen.hf_export import ExportError, export_hf, verify_logits
from hrm_codegen.inference import build_model, load_checkpoint
from hrm_codegen.models.hrm_act_v1 import HierarchicalReasoningModel_ACTV1, HrmCodegenForCausalLM
from hrm_codegen.tokenization import load_tokenizer
from hrm_codegen.train_config import compose_config

REPO = Path(__file__).resolve().parents[1]
EXPORT = REPO / "scripts" / "export_hf.py"
TINY = ["arch.hidden_size=32", "arch.seq_len=64", "arch.H_layers=1", "arch.L_layers=1"]
PROMPTS = ["def add(a, b):", "# Write a function that returns the largest of three numbers.\ndef"]
NEW_TOKENS = 16
SHIPPED = ("configuration_hrm.py", "layers.py", "hrm_act_v1.py")  # hrm_codegen/models/, as they are

# Runs with hrm_codegen made unimportable: the editable install's finder and the repository leave sys.path.
ISOLATED = textwrap.dedent(
    """
    import importlib.util, sys
    repo, export_dir, inputs, output = sys.argv[1:]
    sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
    sys.path[:] = [p for p in sys.path if "__editable__" not in p and p.rstrip("/") != repo.rstrip("/")]
    importlib.invalidate_caches()
    try:
        import hrm_codegen  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("hrm_codegen is still importable: " + str(hrm_codegen.__file__))
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(export_dir, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(export_dir, trust_remote_code=True)
    data = torch.load(inputs)
    result = {"encoded": tokenizer(data["text"], add_special_tokens=False)["input_ids"]}
    with torch.no_grad():
        for name in ("plain", "padded"):
            ids, mask = data[name]
            result[name + "_logits"] = model(input_ids=ids, attention_mask=mask).logits
        ids, mask = data["padded"]
        kwargs = {"attention_mask": mask, "max_new_tokens": data["new_tokens"], "do_sample": False}
        result["generated"] = model.generate(ids, **kwargs)
        result["generated_no_cache"] = model.generate(ids, use_cache=False, **kwargs)
        beams = {"attention_mask": mask, "max_new_tokens": 4, "num_beams": 2, "do_sample": False}
        result["beams"] = model.generate(ids, **beams)  # reorders the HRM cache
        result["beams_no_cache"] = model.generate(ids, use_cache=False, **beams)
    result["modules"] = sorted(m for m in sys.modules if m.startswith("hrm_codegen"))
    torch.save(result, output)
    """
)


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_MODULES_CACHE": str(tmp_path / "hf_modules"),
        "PYTHONPATH": "",
    }


@pytest.fixture(scope="module")
def tokenizer(gpt2_dir):
    return load_tokenizer(gpt2_dir)


def _hrm_checkpoint(run_dir: Path, gpt2_dir: Path, tokenizer, *overrides: str) -> Path:
    """A launcher checkpoint of a tiny HRM (GPT-2 vocabulary, hidden 32, one layer per level, 2x2 cycles)."""
    cfg = compose_config(
        [
            "arch=tiny",
            *TINY,
            "arch.H_cycles=2",
            "arch.L_cycles=2",
            f"tokenizer.name_or_path={gpt2_dir}",
            *overrides,
        ]
    )
    torch.manual_seed(0)
    model = build_model(cfg, tokenizer.vocab_size)
    save_step(run_dir, 1, model, cfg, tokenizer)
    return run_dir


@pytest.fixture(scope="module")
def hrm_run(tmp_path_factory, gpt2_dir, tokenizer):
    return _hrm_checkpoint(tmp_path_factory.mktemp("ck") / "hrm", gpt2_dir, tokenizer)


def test_a_step_loads_with_the_auto_classes_after_import(hrm_run):
    """`<step>/hf` is a save_pretrained directory: AutoModelForCausalLM gives the HRM, with the step's logits."""
    from transformers import AutoConfig, AutoModelForCausalLM

    step = hrm_run / "step_1"
    assert AutoConfig.from_pretrained(step / "hf").model_type == "hrm_codegen"
    auto = AutoModelForCausalLM.from_pretrained(step / "hf").eval()
    assert type(auto) is HrmCodegenForCausalLM
    ours = load_checkpoint(hrm_run).model
    ids = torch.tensor([[5, 6, 7, 8, 9], [0, 0, 3, 4, 5]])
    mask = (ids != 0).long()
    with torch.no_grad():
        expected = ours(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(auto(input_ids=ids, attention_mask=mask).logits, expected, atol=0, rtol=0)


def _left_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def test_export_loads_in_plain_transformers_with_the_projects_logits_and_tokens(hrm_run, tokenizer, tmp_path):
    out = tmp_path / "export"
    done = subprocess.run(
        [sys.executable, str(EXPORT), "--ckpt", str(hrm_run), "--out", str(out)],
        capture_output=True,
        text=True,
        env={**_env(tmp_path), "PYTHONPATH": str(REPO)},  # this checkout's package
        cwd=REPO,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "logits match" in done.stdout
    names = {p.name for p in out.iterdir()}
    expected = {"config.json", "model.safetensors", *SHIPPED}
    assert expected | {"generation_config.json", "tokenizer.json", "tokenizer_config.json"} <= names
    for name in SHIPPED:  # the package's own files, not a generated or sliced copy
        assert (out / name).read_text() == (REPO / "hrm_codegen" / "models" / name).read_text(), name

    loaded = load_checkpoint(hrm_run)
    model = cast(HierarchicalReasoningModel_ACTV1, loaded.model)
    bos = tokenizer.bos_id
    rows = [[bos, *tokenizer.encode(p)] for p in PROMPTS]
    plain = torch.tensor([rows[1][:10], rows[1][-10:]])
    plain_inputs = (plain, torch.ones_like(plain))
    padded_inputs = _left_pad(rows, tokenizer.pad_id)
    inputs = tmp_path / "inputs.pt"
    torch.save(
        {"plain": plain_inputs, "padded": padded_inputs, "text": PROMPTS, "new_tokens": NEW_TOKENS}, inputs
    )

    result_file = tmp_path / "result.pt"
    script = tmp_path / "isolated.py"
    script.write_text(ISOLATED)
    done = subprocess.run(
        [sys.executable, "-I", str(script), str(REPO), str(out), str(inputs), str(result_file)],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = torch.load(result_file)
    assert result["modules"] == []
    assert result["encoded"] == [tokenizer.encode(p) for p in PROMPTS]

    with torch.no_grad():
        for name, (ids, mask) in (("plain", plain_inputs), ("padded", padded_inputs)):
            expected_logits = model(input_ids=ids, attention_mask=mask).logits
            real = mask.bool()
            torch.testing.assert_close(
                result[f"{name}_logits"][real], expected_logits[real], atol=1e-5, rtol=0, msg=name
            )
    ids, mask = padded_inputs
    reference = generate(
        model,
        ids,
        mask,
        max_new_tokens=NEW_TOKENS,
        eos_token_id=tokenizer.eos_id,
        pad_token_id=tokenizer.pad_id,
    )
    assert reference.sequences.shape[1] > ids.shape[1]
    assert torch.equal(result["generated"], reference.sequences)
    assert torch.equal(result["generated_no_cache"], reference.sequences)
    assert torch.equal(result["beams"], result["beams_no_cache"])


def test_transformers_family_checkpoint_is_copied(tmp_path, gpt2_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    cfg = compose_config(["arch=transformer_tiny_params", *TINY, f"tokenizer.name_or_path={gpt2_dir}"])
    model = build_model(cfg, tokenizer.vocab_size)
    run_dir = tmp_path / "llama"
    save_step(run_dir, 1, model, cfg, tokenizer)
    result = export_hf(run_dir, tmp_path / "out")
    assert result.family == "transformer"
    source = run_dir / "step_1" / "hf"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in source.iterdir())
    copy = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(copy(ids).logits, model.eval()(ids).logits)
    with pytest.raises(FileExistsError):
        export_hf(run_dir, tmp_path / "out")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_the_logit_check_holds_in_half_precision_and_catches_wrong_weights(
    dtype, tmp_path, gpt2_dir, tokenizer
):
    """The export of a half-precision model is checked (within that dtype's tolerance), not skipped."""
    run = _hrm_checkpoint(tmp_path / "run", gpt2_dir, tokenizer, f"arch.forward_dtype={dtype}")
    out = tmp_path / "export"
    result = export_hf(run, out)
    assert result.max_abs_diff is not None
    other = cast(HrmCodegenForCausalLM, load_checkpoint(run).model)
    with torch.no_grad():
        other.model.embed_tokens.embedding_weight.mul_(3.0)  # other weights: the export no longer matches
    with pytest.raises(ExportError, match=f"beyond the {dtype} tolerance"):
        verify_logits(other, out)


def test_evaluate_model_runs_an_export_only_with_trust_remote_code(hrm_run, tokenizer, tmp_path, monkeypatch):
    """`evaluate.py --model EXPORT` refuses shipped code unless --trust-remote-code, then decodes like the HRM."""
    from hrm_codegen.completions import ModelCompletions, SamplingConfig
    from hrm_codegen.datasets.problems import Problem
    from hrm_codegen.hf_export import export_hf
    from hrm_codegen.inference import load_pretrained

    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "hf_modules"))
    out = tmp_path / "export"
    export_hf(hrm_run, out, verify=False)
    with pytest.raises(ValueError, match="ships its own modeling code .* --trust-remote-code"):
        load_pretrained(out)
    exported = load_pretrained(out, trust_remote_code=True)
    problems = [Problem(task_id=str(i), prompt=p, test_program="") for i, p in enumerate(PROMPTS)]
    sampling = SamplingConfig(max_new_tokens=8, batch_size=2)
    theirs = ModelCompletions.from_loaded(exported, sampling, progress=False)(problems, [[0], [0]])
    ours = ModelCompletions.from_loaded(load_checkpoint(hrm_run), sampling, progress=False)(
        problems, [[0], [0]]
    )
    assert theirs == ours
