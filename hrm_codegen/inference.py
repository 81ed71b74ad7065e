"""Loading a model for inference: any step or run directory written by this launcher, or an outside
transformers causal LM, to (model, tokenizer, family) without importing the training loop."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from torch import nn

from hrm_codegen.checkpoint import TOKENIZER_DIR, WEIGHTS_FILE, check_weights_fit, read_meta, verify_export
from hrm_codegen.families import FAMILIES, ModelFamily, get_family
from hrm_codegen.families.base import arch_from_hf_config
from hrm_codegen.families.transformers_lm import PRETRAINED, PRETRAINED_SOURCE_KEY
from hrm_codegen.models.configuration_hrm import max_bp_steps
from hrm_codegen.runs import CONFIG_FILE, META_FILE, CheckpointError, resolve_checkpoint
from hrm_codegen.tokenization import FINGERPRINT_FILE, check_fingerprint, load_tokenizer

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A model in eval mode with its tokenizer and family; `config` is the training config (ours only)."""

    model: nn.Module
    tokenizer: Any
    family: ModelFamily
    config: DictConfig | None
    source: str  # what was loaded, for records: "hrm <step dir>", "pretrained <dir or Hub id>"


def model_config(cfg: DictConfig, vocab_size: int) -> dict[str, Any]:
    """The model's config mapping: `cfg.arch` without `name`, vocab_size from the tokenizer when null."""
    arch = cast(dict[str, Any], OmegaConf.to_container(cfg.arch, resolve=True))
    arch.pop("name", None)
    configured = arch.get("vocab_size")
    if configured is not None and configured < vocab_size:
        raise ValueError(f"arch.vocab_size={configured} is smaller than the tokenizer's {vocab_size} tokens")
    arch["vocab_size"] = configured or vocab_size
    return arch


def override_arch(arch: DictConfig, overrides: Mapping[str, Any], what: str) -> DictConfig:
    """`arch` (a config's `arch` section) with `overrides` merged over it, checked against its family's keys.

    A key the family does not know (neither in its schemas nor in `arch`), or `name` (the family itself), is a
    ValueError naming `what` (the setting the overrides came from); values are checked when the model is built.
    """
    family = get_family(str(arch["name"]))
    if "name" in overrides:
        raise ValueError(f"{what}: `name` (the model family, arch.name={family.name}) cannot be overridden")
    known = set(arch) | {
        f.name
        for schema in family.arch_schemas().values()
        if dataclasses.is_dataclass(schema)
        for f in dataclasses.fields(schema)
    }
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(
            f"{what}: unknown arch key(s) {unknown} for arch.name={family.name}; "
            f"expected some of {sorted(known - {'name'})}"
        )
    return cast(DictConfig, OmegaConf.merge(arch, dict(overrides)))


def build_model(cfg: DictConfig, vocab_size: int) -> nn.Module:
    """The model of `cfg.arch` (its family by `cfg.arch.name`) for a tokenizer of `vocab_size` tokens."""
    return get_family(cfg.arch.name).build(model_config(cfg, vocab_size))


def _load_config(config: str | Path | DictConfig | Mapping[str, Any] | None, weights: Path) -> DictConfig:
    if config is None:
        beside = weights.parent / CONFIG_FILE
        if not beside.is_file():
            raise CheckpointError(
                f"{weights} is a bare weights file and no {CONFIG_FILE} lies next to it: pass config=<config.yaml>"
            )
        config = beside
    if isinstance(config, DictConfig):
        return config
    if isinstance(config, Mapping):
        return OmegaConf.create(dict(config))
    config = Path(config)
    if not config.is_file():
        raise CheckpointError(f"config file {config} does not exist")
    loaded = OmegaConf.load(config)
    if not isinstance(loaded, DictConfig) or "arch" not in loaded:
        raise CheckpointError(f"{config}: expected a training config with an `arch` section")
    return loaded


def recorded_arch(family: ModelFamily, model: nn.Module, arch: DictConfig) -> Any:
    """The arch a run records (config.yaml): the one built when the model's architecture came from a pretrained
    transformers config (train.init_from, or a step of a run that started so), else `arch` as composed.

    When the family's arch keys cannot describe that model (the arch they give builds other parameters), the
    composed arch stays, with a warning: the run's steps rebuild the model from their hf/config.json.
    """
    hf_config = getattr(model, "config", None)
    if not getattr(hf_config, PRETRAINED_SOURCE_KEY, None):
        return arch
    composed = cast(dict[str, Any], OmegaConf.to_container(arch, resolve=True))
    built = arch_from_hf_config(hf_config, composed)
    try:
        with torch.device("meta"):
            rebuilt = family.build(model_config(OmegaConf.create({"arch": built}), 1))
        check_weights_fit(model.state_dict(), rebuilt, f"the {type(model).__name__} of train.init_from")
    except ValueError as err:
        logger.warning(
            "config.yaml keeps the composed arch: arch.name=%s keys cannot describe the model built (%s); "
            "its steps rebuild it from their hf/config.json",
            family.name,
            err,
        )
        return arch
    return built


def parse_arch_overrides(items: Sequence[str], where: str = "arch override") -> dict[str, Any] | None:
    """KEY=VALUE items (e.g. L_cycles=3) as a mapping for `load_checkpoint(arch_overrides=...)`, the values parsed
    as YAML scalars; None when there are none. ValueError naming `where` for a malformed or repeated item."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"{where} takes KEY=VALUE (e.g. L_cycles=3), got {item!r}")
        if key in overrides:
            raise ValueError(f"{where} {key} is given twice")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ValueError(f"{where} {key}: {text!r} is not a YAML scalar") from None
        if isinstance(value, dict | list):
            raise ValueError(
                f"{where} {key}: the value must be a scalar (a number, string, true/false or null)"
            )
        overrides[key] = value
    return overrides or None


def fewer_cycles_bp_steps(arch: DictConfig, overrides: Mapping[str, Any]) -> DictConfig:
    """`arch` with a saved bp_steps that the overridden cycles no longer have steps for set to 0 (full
    backpropagation), the rule `set_cycles` applies in training: a model trained with bp_steps=3 evaluates at one
    L cycle. An explicit bp_steps override is kept as given (and checked when the model is built)."""
    cycles_changed = "H_cycles" in overrides or "L_cycles" in overrides
    if not cycles_changed or "bp_steps" in overrides or arch.get("name") != "hrm":
        return arch
    most = max_bp_steps(int(arch.get("H_cycles", 1)), int(arch.get("L_cycles", 1)))
    if int(arch.get("bp_steps") or 0) > most:
        arch = cast(DictConfig, OmegaConf.merge(arch, {"bp_steps": 0}))
    return arch


def load_checkpoint(
    path: str | Path,
    tokenizer: Any = None,
    config: str | Path | DictConfig | Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
    arch_overrides: Mapping[str, Any] | None = None,
) -> LoadedModel:
    """A model of any family from a step directory, a run directory (its latest step) or a weights file.

    A step directory supplies its config.yaml and tokenizer/ (fingerprint verified). A bare weights file needs
    `config` (a config.yaml path or mapping) or a config.yaml next to it, and `tokenizer` or a tokenizer/ next
    to it (else the config's `tokenizer.name_or_path`). `arch_overrides` are merged over the config's `arch`
    before the model is built (e.g. test-time cycles: {"L_cycles": 3}); the returned config has them. Keys that
    change a parameter's shape fail when the weights load, with an error saying so.
    """
    resolved = resolve_checkpoint(path)
    if resolved.is_dir():
        meta = read_meta(resolved)
        cfg = _load_config(config if config is not None else resolved / CONFIG_FILE, resolved / WEIGHTS_FILE)
        expected_fingerprint = meta["tokenizer_fingerprint"]
        where = str(resolved / META_FILE)
        tokenizer_dir = resolved / TOKENIZER_DIR
    else:
        cfg = _load_config(config, resolved)
        expected_fingerprint = OmegaConf.select(cfg, "tokenizer.fingerprint")
        where = "the config's tokenizer.fingerprint"
        tokenizer_dir = resolved.parent / TOKENIZER_DIR
    if tokenizer is None:
        source = tokenizer_dir if tokenizer_dir.is_dir() else OmegaConf.select(cfg, "tokenizer.name_or_path")
        if source is None:
            raise CheckpointError(
                f"no tokenizer for {resolved}: pass tokenizer= or add a {TOKENIZER_DIR}/ next to it"
            )
        tokenizer = load_tokenizer(source)
    if expected_fingerprint:
        check_fingerprint(expected_fingerprint, tokenizer, where)
    family = get_family(cfg.arch.name)
    overrides = dict(arch_overrides or {})
    if overrides:
        arch = override_arch(cfg.arch, overrides, "arch overrides")
        cfg = cast(DictConfig, OmegaConf.merge(cfg, {"arch": fewer_cycles_bp_steps(arch, overrides)}))
    vocab_size = OmegaConf.select(cfg, "arch.vocab_size") or tokenizer.vocab_size
    try:
        model = family.build_for_checkpoint(model_config(cfg, vocab_size), resolved)
    except ValueError as err:
        if not overrides:
            raise
        raise ValueError(f"arch overrides {overrides}: {err}") from err
    try:
        family.load_weights(model, resolved)
    except CheckpointError as err:
        if not overrides:
            raise
        raise CheckpointError(
            f"arch overrides {overrides} change the model's parameters, so the weights of {resolved} do not "
            f"load; override only keys that keep every parameter's shape (e.g. H_cycles, L_cycles): {err}"
        ) from err
    return LoadedModel(model.to(device).eval(), tokenizer, family, cfg, f"{family.name} {resolved.resolve()}")


def load_model_for_inference(
    path: str | Path,
    tokenizer: Any = None,
    config: str | Path | DictConfig | Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, Any]:
    """(model in eval mode, tokenizer) of `load_checkpoint`."""
    loaded = load_checkpoint(path, tokenizer, config, device)
    return loaded.model, loaded.tokenizer


def load_pretrained(
    path: str | Path,
    tokenizer: str | Path | None = None,
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
) -> LoadedModel:
    """An outside transformers causal LM: a local save_pretrained directory or a Hub id.

    A tokenizer saved by this project (with `fingerprint.txt`) loads as a `CodeTokenizer`, so prompts are
    encoded as in training (`[BOS] prompt`); any other loads as the plain Hugging Face tokenizer. A step's
    `hf/` directory is verified against the step's meta.json first. A directory that ships its own modeling
    code (`auto_map` in config.json, e.g. `scripts/export_hf.py`'s HRM export) needs `trust_remote_code`.
    """
    from transformers import AutoTokenizer

    from hrm_codegen.pretrained_sources import load_causal_lm

    model_path = Path(path).expanduser()
    if not model_path.is_dir() and str(path).startswith((".", "/", "~")):
        raise FileNotFoundError(f"model directory {model_path} does not exist")
    tokenizer_source = Path(tokenizer).expanduser() if tokenizer is not None else model_path
    if model_path.is_dir():
        verify_export(model_path)
        config_file = model_path / "config.json"
        if (
            not trust_remote_code
            and config_file.is_file()
            and "auto_map" in json.loads(config_file.read_text())
        ):
            raise ValueError(
                f"{model_path} ships its own modeling code (auto_map in config.json): read it, then pass "
                "--trust-remote-code to run it"
            )
    model = cast(
        nn.Module,
        load_causal_lm(path, dtype="auto", trust_remote_code=trust_remote_code, what="--model"),
    )
    if (tokenizer_source / FINGERPRINT_FILE).is_file():
        hf_tokenizer: Any = load_tokenizer(tokenizer_source)
    else:
        try:
            hf_tokenizer = AutoTokenizer.from_pretrained(
                str(tokenizer_source), trust_remote_code=trust_remote_code
            )
        except (OSError, ValueError) as err:
            raise ValueError(
                f"could not load a tokenizer from {tokenizer_source}; pass --tokenizer with a tokenizer "
                f"directory ({str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__})"
            ) from err
    source = model_path.resolve() if model_path.exists() else path
    # A model a family of ours wraps decodes through that family (HRM-Text: its prompt is the PrefixLM prefix).
    family = next(
        (f for f in FAMILIES.values() if isinstance(model, getattr(f, "model_class", None) or ())),
        PRETRAINED,
    )
    return LoadedModel(model.to(device).eval(), hf_tokenizer, family, None, f"pretrained {source}")


def checkpoint_family(path: str | Path) -> str:
    """The family name (`arch.name`) of a checkpoint of this launcher, read from its config.yaml."""
    resolved = resolve_checkpoint(path)
    config = (resolved if resolved.is_dir() else resolved.parent) / CONFIG_FILE
    if not config.is_file():
        raise CheckpointError(f"{resolved}: no {CONFIG_FILE} beside it to tell its model family")
    return str(OmegaConf.select(OmegaConf.load(config), "arch.name"))
