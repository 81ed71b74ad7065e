"""Export a checkpoint as a Hugging Face directory that plain transformers loads without this package.

`export_hf(ckpt, out)` writes, for an HRM checkpoint (`arch.name=hrm`):

    config.json                  HrmCodegenConfig: the HRM config keys, bos/eos/pad ids, `auto_map`
    configuration_hrm_codegen.py the config class (the `HrmCodegenConfig` source of this module)
    modeling_hrm_codegen.py      the HRM model code GENERATED at export time from this package's own model
                                 modules (`hrm_codegen/models/*.py`, intra-package imports removed), then the
                                 transformers wrapper below (`HrmCodegenForCausalLM`, `HrmCodegenCache`)
    model.safetensors            the weights, named `model.<name in HierarchicalReasoningModel_ACTV1>`
    generation_config.json       bos/eos/pad ids
    tokenizer files              the checkpoint's tokenizer (and its fingerprint.txt)

so that `AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)` gives the same logits as the
project's model and `generate()` decodes with the HRM's own KV cache (one slot per (segment, cycle, level,
layer) attention call). A transformers-family checkpoint (the Llama baseline) is already a save_pretrained
directory (`<step>/hf/`) and is copied as is.

The shipped modeling code is never kept by hand: `model_source()` reads the source of the model modules with
`inspect`/`ast`, follows their `from hrm_codegen... import` statements (including every package module they
import), drops those statements (the names are defined in the concatenated file), and fails loudly, naming the
module, when one imports something a plain transformers environment may lack or when two modules define one
name differently. The wrapper classes are defined (and tested) in this module and copied from its source.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import inspect
import shutil
import sys
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.utils.generic import ModelOutput

from hrm_codegen.models.hrm_act_v1 import HierarchicalReasoningModel_ACTV1, HRMConfig
from hrm_codegen.models.layers import KVCache

PACKAGE = "hrm_codegen"
MODEL_TYPE = "hrm_codegen"
CONFIG_MODULE = "configuration_hrm_codegen"
MODELING_MODULE = "modeling_hrm_codegen"
WEIGHT_PREFIX = "model."  # HrmCodegenForCausalLM keeps the HRM as `self.model`
# The objects the wrapper needs from the model code: their modules are the roots of the generated source.
REQUIRED = {
    "HierarchicalReasoningModel_ACTV1": HierarchicalReasoningModel_ACTV1,
    "HRMConfig": HRMConfig,
    "KVCache": KVCache,
}
# Third-party packages the shipped model code may import outside a try block (transformers brings torch).
ALLOWED_THIRD_PARTY = frozenset({"torch"})


class ExportError(RuntimeError):
    """The model code cannot be shipped as one file, or the exported directory does not match the model."""


# --------------------------------------------------------------------------------------------------------------
# The transformers wrapper. Everything from here to the end of `HrmCodegenForCausalLM` is copied verbatim into
# the shipped files (names in CONFIG_NAMES / MODELING_NAMES), after the imports in CONFIG_IMPORTS /
# MODELING_IMPORTS, which must be the only outside names these definitions use.


class HrmCodegenConfig(PretrainedConfig):
    """transformers config of an exported HRM: the keys of the HRM's config (`HRMConfig`) at the top level.

    `max_position_embeddings` mirrors `seq_len` (evaluation harnesses read it as the context length).
    """

    model_type = "hrm_codegen"

    def __init__(self, **kwargs: Any) -> None:
        if kwargs.get("seq_len") is not None:
            kwargs.setdefault("max_position_embeddings", kwargs["seq_len"])
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)


def hrm_config_dict(config: Any) -> dict[str, Any]:
    """The HRM's config mapping from a transformers config (HRMConfig's fields that it sets)."""
    return {f.name: getattr(config, f.name) for f in fields(HRMConfig) if hasattr(config, f.name)}


class HrmCodegenCache(Cache):
    """The HRM's own `KVCache` behind transformers' `Cache` interface.

    The HRM runs every (segment, cycle, level, layer) attention call on each new position, and each call keeps
    its own key/value slot, so the cache is not one-slot-per-layer like `DynamicCache`: generation passes this
    object between steps (the model's forward creates it on the first step and returns it as `cache`).
    `Cache.__init__` is not called (its signature differs between transformers versions).
    """

    def __init__(self) -> None:
        self.layers = []
        self.kv = KVCache()
        self.length = 0  # positions cached (padding included)

    def get_seq_length(self, layer_idx: int | None = 0) -> int:
        return self.length

    def get_max_cache_shape(self, layer_idx: int = 0) -> int:
        return -1

    @property
    def is_compileable(self) -> bool:
        return False

    @property
    def is_croppable(self) -> bool:
        return False

    @property
    def is_sliding(self) -> list[bool]:
        return [False]

    @property
    def is_linear(self) -> list[bool]:
        return [False]

    @property
    def batch_size(self) -> int:
        return 0 if self.kv.key_mask is None else self.kv.key_mask.shape[0]

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        """Select batch rows (beam search)."""
        self.kv.reorder(beam_idx)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.kv.reorder(indices)

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.kv.key_mask is not None:
            index = torch.arange(self.batch_size, device=self.kv.key_mask.device)
            self.kv.reorder(index.repeat_interleave(repeats))

    def crop(self, max_length: int) -> None:
        raise NotImplementedError("the HRM cache cannot be cropped (assisted decoding is not supported)")


@dataclass
class HrmCodegenOutput(ModelOutput):
    """Logits (and loss with `labels`) and the cache (`past_key_values` too: a property in transformers 5)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: Cache | None = None


class HrmCodegenForCausalLM(PreTrainedModel, GenerationMixin):
    """The HRM (`HierarchicalReasoningModel_ACTV1`, as `self.model`) as a transformers causal LM.

    `forward` runs `lm_forward` (halt_max_steps fresh ACT segments) and returns its logits; with `use_cache`
    it keeps the HRM's KV cache in an `HrmCodegenCache`, so `generate()` runs every cycle for the new
    position only. Prompts must be left-padded (as transformers' generate expects for decoder-only models).
    """

    config_class = HrmCodegenConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = False
    _no_split_modules: list[str] = []
    _supports_cache_class = True

    def __init__(self, config: HrmCodegenConfig) -> None:
        super().__init__(config)
        self.model = HierarchicalReasoningModel_ACTV1(hrm_config_dict(config))
        self.post_init()

    def _init_weights(self, module: Any) -> None:
        """Parameters: nothing (the HRM initialises itself, loaded weights overwrite that). Buffers that are not
        saved (the RoPE tables) are recomputed: transformers 5 loads into a model built on the meta device."""
        names = getattr(module, "_non_persistent_buffers_set", None)
        if not names:
            return
        prefix = next((n for n, m in self.model.named_modules() if m is module), None)
        if prefix is None:
            return
        reference = self.__dict__.get("_reference_buffers")
        if reference is None:
            with torch.device("cpu"):  # a fresh HRM, whatever device the loader builds on
                fresh = HierarchicalReasoningModel_ACTV1(hrm_config_dict(self.config))
            persistent = fresh.state_dict().keys()
            reference = {k: v for k, v in fresh.named_buffers() if k not in persistent}
            self.__dict__["_reference_buffers"] = reference
        with torch.no_grad():
            for name in names:
                buffer = getattr(module, name, None)
                key = f"{prefix}.{name}" if prefix else name
                if buffer is not None and key in reference and not buffer.is_meta:
                    buffer.copy_(reference[key])

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        """No DynamicCache: the forward creates the HRM's own cache."""
        return False

    def get_input_embeddings(self) -> Any:
        return self.model.inner.embed_tokens

    def get_output_embeddings(self) -> Any:
        return None

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: Cache | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """Logits [B, S, vocab] of `input_ids` (only the new positions when a cache is given).

        `attention_mask` covers the cached and the new positions (1 = real token); `position_ids` default
        to the count of real tokens before each position, as in the project's model.
        """
        if inputs_embeds is not None or input_ids is None:
            raise ValueError("HrmCodegenForCausalLM takes input_ids (inputs_embeds are not supported)")
        cache = cache if cache is not None else past_key_values
        if cache is not None and not isinstance(cache, HrmCodegenCache):
            if cache.get_seq_length() != 0:
                raise ValueError(
                    f"HrmCodegenForCausalLM needs an HrmCodegenCache, got {type(cache).__name__}"
                )
            cache, use_cache = None, True  # an empty cache transformers made for us: use the HRM's own
        if use_cache is None:
            use_cache = cache is not None
        if use_cache and cache is None:
            cache = HrmCodegenCache()
        new = input_ids.shape[1]
        past = cache.length if isinstance(cache, HrmCodegenCache) else 0
        mask = None if attention_mask is None else attention_mask[:, -new:]
        if position_ids is not None:
            positions = position_ids[:, -new:]
        elif attention_mask is not None:
            positions = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)[:, -new:]
        elif past:
            positions = torch.arange(past, past + new, device=input_ids.device).expand(input_ids.shape[0], -1)
        else:
            positions = None
        logits = self.model.lm_forward(
            input_ids,
            mask,
            position_ids=positions,
            kv_cache=cache.kv if isinstance(cache, HrmCodegenCache) else None,
            logits_to_keep=logits_to_keep or 0,
        )
        if isinstance(cache, HrmCodegenCache):
            cache.length = past + new
        loss = None
        if labels is not None:
            shifted = logits[:, :-1].float().reshape(-1, logits.shape[-1])
            loss = torch.nn.functional.cross_entropy(shifted, labels[:, 1:].reshape(-1), ignore_index=-100)
        if return_dict is False:
            return (logits,) if loss is None else (loss, logits)
        output = HrmCodegenOutput(loss=loss, logits=logits, cache=cache)
        if cache is not None and not hasattr(HrmCodegenOutput, "past_key_values"):
            output["past_key_values"] = cache  # transformers 4 reads the cache under this name
        return output

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.Tensor,
        past_key_values: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: Cache | None = None,
        position_ids: torch.Tensor | None = None,
        use_cache: bool | None = True,
        logits_to_keep: int | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """The positions not yet in the cache, the full attention mask and the cache."""
        if inputs_embeds is not None and not isinstance(cache or past_key_values, HrmCodegenCache):
            raise ValueError(
                "HrmCodegenForCausalLM generates from input_ids (inputs_embeds are not supported)"
            )
        cache = cache if cache is not None else past_key_values
        past = cache.length if isinstance(cache, HrmCodegenCache) else 0
        inputs: dict[str, Any] = {
            "input_ids": input_ids[:, past:].contiguous(),
            "attention_mask": attention_mask,
            "cache": cache,
            "use_cache": use_cache,
        }
        if position_ids is not None:
            inputs["position_ids"] = position_ids[:, -(input_ids.shape[1] - past) :]
        if logits_to_keep is not None:
            inputs["logits_to_keep"] = logits_to_keep
        return inputs

    def _reorder_cache(self, cache: Any, beam_idx: torch.Tensor) -> Any:
        cache.reorder_cache(beam_idx)
        return cache


# End of the shipped definitions.
# --------------------------------------------------------------------------------------------------------------

CONFIG_NAMES = ("HrmCodegenConfig",)
MODELING_NAMES = (
    "hrm_config_dict",
    "HrmCodegenCache",
    "HrmCodegenOutput",
    "HrmCodegenForCausalLM",
)
CONFIG_IMPORTS = "from typing import Any\n\nfrom transformers import PretrainedConfig\n"
MODELING_IMPORTS = (
    "from dataclasses import dataclass, fields\n"
    "from typing import Any\n\n"
    "import torch\n"
    "from transformers import GenerationMixin, PreTrainedModel\n"
    "from transformers.cache_utils import Cache\n"
    "from transformers.utils.generic import ModelOutput\n\n"
    f"from .{CONFIG_MODULE} import HrmCodegenConfig\n"
)


# --------------------------------------------------------------------------------------------------------------
# Generating the shipped source.


@dataclass
class _Module:
    """One package module prepared for concatenation."""

    name: str
    path: Path
    text: str  # the source with its intra-package imports replaced
    order_deps: set[str]  # package modules it needs defined first (top-level imports)
    all_deps: set[str]  # every package module it imports (also inside functions)
    definitions: dict[str, tuple[str, str]]  # top-level name -> (kind, source) of defs, classes, assignments
    future: bool  # had `from __future__ import annotations`


def _is_package_module(name: str) -> bool:
    return name == PACKAGE or name.startswith(PACKAGE + ".")


def _is_submodule(package: str, name: str) -> bool:
    """Whether `from package import name` imports a module."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.submodule_search_locations is None:
        return False
    return importlib.util.find_spec(f"{package}.{name}") is not None


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module name of a (possibly relative) from-import inside `module`."""
    if not node.level:
        return node.module or ""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def _walk(node: ast.AST, in_try: bool = False, top: bool = True, type_checking: bool = False):
    """Yield (node, in_try, top_level, under_type_checking) for every statement below `node`."""
    for child in ast.iter_child_nodes(node):
        if not isinstance(child, ast.stmt):
            continue
        yield child, in_try, top, type_checking
        child_try = in_try or isinstance(child, ast.Try)
        child_top = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        child_tc = type_checking or (isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test))
        yield from _walk(child, child_try, child_top, child_tc)


def _definitions(tree: ast.Module, source: str) -> dict[str, tuple[str, str]]:
    found: dict[str, tuple[str, str]] = {}
    for node in tree.body:
        segment = ast.get_source_segment(source, node) or ""
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found[node.name] = ("definition", segment)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        found[name.id] = ("assignment", segment)
    return {k: v for k, v in found.items() if not (k.startswith("__") and k.endswith("__"))}


def _prepare(module_name: str) -> _Module:
    """Read a package module and replace its intra-package imports (failing on what cannot be shipped)."""
    module = importlib.import_module(module_name)
    path = Path(inspect.getfile(module))
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(path))
    is_package = path.name == "__init__.py"
    lines = source.splitlines(keepends=True)
    replacements: dict[int, tuple[int, str]] = {}  # first line index -> (last line index, replacement)
    order_deps: set[str] = set()
    all_deps: set[str] = set()
    future = False

    def replace(node: ast.stmt, text: str) -> None:
        first, last = node.lineno - 1, (node.end_lineno or node.lineno) - 1
        before = lines[first][: node.col_offset]
        after = lines[last][node.end_col_offset :] if node.end_col_offset is not None else ""
        if before.strip() or after.strip().split("#")[0].strip():
            raise ExportError(f"{path}:{node.lineno}: put this import on its own line to ship {module_name}")
        indent = " " * node.col_offset
        replacements[first] = (last, "".join(f"{indent}{line}\n" for line in text.splitlines()))

    for node, in_try, top, type_checking in _walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _is_package_module(alias.name):
                    raise ExportError(
                        f"{path}:{node.lineno}: `import {alias.name}` in {module_name}: the shipped modeling "
                        "file can only inline `from hrm_codegen... import name` statements"
                    )
                _check_third_party(alias.name, in_try, module_name, path, node)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(node, module_name, is_package)
            if target == "__future__":
                future = future or any(a.name == "annotations" for a in node.names)
                replace(node, "pass")
                continue
            if not _is_package_module(target):
                _check_third_party(target, in_try, module_name, path, node)
                continue
            for alias in node.names:
                if alias.name == "*" or _is_submodule(target, alias.name):
                    raise ExportError(
                        f"{path}:{node.lineno}: {module_name} imports the module {target}.{alias.name}; the shipped "
                        "modeling file can only inline names imported with `from module import name`"
                    )
            all_deps.add(target)
            if top and not type_checking:
                order_deps.add(target)
            aliases = [f"{a.asname} = {a.name}" for a in node.names if a.asname and a.asname != a.name]
            replace(node, "\n".join(aliases) or "pass")

    out: list[str] = []
    index = 0
    while index < len(lines):
        if index in replacements:
            last, text = replacements[index]
            out.append(text)
            index = last + 1
        else:
            out.append(lines[index])
            index += 1
    return _Module(module_name, path, "".join(out), order_deps, all_deps, _definitions(tree, source), future)


def _check_third_party(name: str, in_try: bool, module_name: str, path: Path, node: ast.stmt) -> None:
    top = name.split(".")[0]
    if in_try or top in sys.stdlib_module_names or top in ALLOWED_THIRD_PARTY:
        return
    raise ExportError(
        f"{path}:{node.lineno}: {module_name} imports {name!r}, which a plain transformers environment may lack; "
        f"the shipped modeling file allows the standard library, {sorted(ALLOWED_THIRD_PARTY)}, and imports "
        "inside try blocks"
    )


def _collect(roots: Iterable[str]) -> list[_Module]:
    """The root modules and every package module they import, dependencies first."""
    prepared: dict[str, _Module] = {}
    pending = list(roots)
    while pending:
        name = pending.pop()
        if name not in prepared:
            prepared[name] = _prepare(name)
            pending.extend(sorted(prepared[name].all_deps))
    ordered: list[_Module] = []
    state: dict[str, str] = {}

    def visit(name: str, chain: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            raise ExportError(f"import cycle between package modules: {' -> '.join([*chain, name])}")
        state[name] = "visiting"
        for dep in sorted(prepared[name].order_deps):
            visit(dep, [*chain, name])
        state[name] = "done"
        ordered.append(prepared[name])

    for name in sorted(prepared):
        visit(name, [])
    return ordered


def _check_names(modules: list[_Module], reserved: dict[str, str]) -> None:
    """Fail when two modules (or a module and the wrapper) bind one top-level name differently."""
    seen: dict[str, tuple[str, str, str]] = {}
    for module in modules:
        for name, (kind, segment) in module.definitions.items():
            if name in reserved:
                raise ExportError(
                    f"{module.name} defines {name!r}, which the shipped wrapper also binds ({reserved[name]})"
                )
            if name in seen:
                other, other_kind, other_segment = seen[name]
                if not (kind == other_kind == "assignment" and segment == other_segment):
                    raise ExportError(
                        f"{other} and {module.name} both define {name!r}: they cannot share one shipped file"
                    )
            seen[name] = (module.name, kind, segment)


def _wrapper_source(names: Iterable[str]) -> str:
    """The source of this module's definitions `names`, decorators included, in the given order."""
    source = Path(__file__).read_text(encoding="utf-8")
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    nodes = {
        n.name: n for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
    }
    parts = []
    for name in names:
        node = nodes[name]
        first = min([node.lineno, *(d.lineno for d in node.decorator_list)]) - 1
        parts.append("".join(lines[first : node.end_lineno]))
    return "\n\n".join(parts)


def _imported_names(imports: str) -> dict[str, str]:
    names: dict[str, str] = {}
    for node in ast.parse(imports).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                names[(alias.asname or alias.name).split(".")[0]] = "an import of the wrapper"
    return names


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _roots() -> list[str]:
    return sorted({obj.__module__ for obj in REQUIRED.values()})


def model_source() -> str:
    """The shipped `modeling_hrm_codegen.py`: the package's model modules concatenated, then the wrapper."""
    modules = _collect(_roots())
    reserved = _imported_names(MODELING_IMPORTS) | {n: "a wrapper definition" for n in MODELING_NAMES}
    _check_names(modules, reserved)
    defined = {name for m in modules for name in m.definitions}
    missing = sorted(set(REQUIRED) - defined)
    if missing:
        raise ExportError(
            f"the generated model code defines no {missing} (modules: {[m.name for m in modules]})"
        )
    listing = "\n".join(
        f"    {m.name} ({m.path.name}, sha256 {_digest(m.path.read_text())})" for m in modules
    )
    header = (
        '"""HRM-CodeGen model code for transformers (`trust_remote_code=True`). GENERATED, do not edit.\n\n'
        "Written by hrm_codegen.hf_export from these modules of the hrm_codegen package (their imports of each\n"
        "other removed; the names are defined below), followed by the transformers wrapper:\n"
        f"{listing}\n"
        '"""\n\n'
    )
    future = "from __future__ import annotations\n\n" if any(m.future for m in modules) else ""
    body = "".join(f"# {'-' * 100}\n# {m.name} ({m.path.name})\n\n{m.text.rstrip()}\n\n\n" for m in modules)
    wrapper = f"# {'-' * 100}\n# The transformers wrapper (hrm_codegen.hf_export)\n\n{MODELING_IMPORTS}\n\n"
    text = header + future + body + wrapper + _wrapper_source(MODELING_NAMES) + "\n"
    compile(text, f"{MODELING_MODULE}.py", "exec")
    return text


def config_source() -> str:
    """The shipped `configuration_hrm_codegen.py`."""
    header = '"""HRM-CodeGen config for transformers (`trust_remote_code=True`). GENERATED by hrm_codegen.hf_export."""\n\n'
    text = (
        header
        + "from __future__ import annotations\n\n"
        + CONFIG_IMPORTS
        + "\n\n"
        + _wrapper_source(CONFIG_NAMES)
        + "\n"
    )
    compile(text, f"{CONFIG_MODULE}.py", "exec")
    return text


# --------------------------------------------------------------------------------------------------------------
# Exporting.


@dataclass
class ExportResult:
    """What `export_hf` wrote: the directory, the family, the source step and the largest logit difference."""

    out: Path
    family: str
    source: Path
    max_abs_diff: float | None = None


def _prepare_out(out: Path, force: bool) -> None:
    if out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out} exists and is not empty; pass force=True (--force) to write into it")
    out.mkdir(parents=True, exist_ok=True)


def export_hf(ckpt: str | Path, out: str | Path, *, force: bool = False, verify: bool = True) -> ExportResult:
    """Write a transformers-loadable directory for the checkpoint `ckpt` (a run, step or weights path).

    HRM checkpoints get the generated modeling code (see the module docstring); with `verify` the export is
    loaded back with `AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)` and its logits are
    compared with the project's model. Transformers-family checkpoints are copied from `<step>/hf/`.
    """
    from hrm_codegen.checkpoint import verify_export
    from hrm_codegen.inference import checkpoint_family, load_checkpoint
    from hrm_codegen.runs import resolve_checkpoint

    out = Path(out).expanduser()
    step = resolve_checkpoint(ckpt)
    family = checkpoint_family(step)
    hf_dir = step / "hf" if step.is_dir() else None
    if family != "hrm" and hf_dir is not None and hf_dir.is_dir():
        verify_export(hf_dir)
        _prepare_out(out, force)
        shutil.copytree(hf_dir, out, dirs_exist_ok=True)
        return ExportResult(out, family, step)

    loaded = load_checkpoint(step)
    if not isinstance(loaded.model, HierarchicalReasoningModel_ACTV1):
        if isinstance(loaded.model, PreTrainedModel):
            _prepare_out(out, force)
            loaded.model.save_pretrained(out)
            loaded.tokenizer.save(out)
            return ExportResult(out, family, step)
        raise ExportError(f"arch.name={family}: no Hugging Face export for {type(loaded.model).__name__}")
    _prepare_out(out, force)
    _write_hrm(loaded.model, loaded.tokenizer, out, source=f"{family} {step.resolve()}")
    diff = _verify(loaded.model, out) if verify else None
    return ExportResult(out, family, step, diff)


def _write_hrm(model: HierarchicalReasoningModel_ACTV1, tokenizer: Any, out: Path, source: str) -> None:
    from safetensors.torch import save_file
    from transformers import GenerationConfig

    (out / f"{MODELING_MODULE}.py").write_text(model_source(), encoding="utf-8")
    (out / f"{CONFIG_MODULE}.py").write_text(config_source(), encoding="utf-8")
    config = HrmCodegenConfig(
        **model.config.to_dict(),
        bos_token_id=tokenizer.bos_id,
        eos_token_id=tokenizer.eos_id,
        pad_token_id=tokenizer.pad_id,
        architectures=["HrmCodegenForCausalLM"],
        auto_map={
            "AutoConfig": f"{CONFIG_MODULE}.HrmCodegenConfig",
            "AutoModelForCausalLM": f"{MODELING_MODULE}.HrmCodegenForCausalLM",
        },
        hrm_codegen_source=source,
    )
    config.to_json_file(str(out / "config.json"))
    GenerationConfig(
        bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id
    ).save_pretrained(out)
    tensors = {WEIGHT_PREFIX + k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.hf.model_max_length = model.config.seq_len  # the context harnesses truncate prompts to
    tokenizer.save(out)


def _verify(model: HierarchicalReasoningModel_ACTV1, out: Path, atol: float = 1e-5) -> float:
    """Load the export with transformers and compare its logits with `model`'s on a small padded batch."""
    from transformers import AutoModelForCausalLM

    exported: Any = AutoModelForCausalLM.from_pretrained(str(out), trust_remote_code=True)
    exported.eval()
    generator = torch.Generator().manual_seed(0)
    length = min(16, model.config.seq_len)
    device = next(model.parameters()).device
    ids = torch.randint(0, model.config.vocab_size, (2, length), generator=generator).to(device)
    mask = torch.ones_like(ids)
    mask[1, : length // 2] = 0
    with torch.no_grad():
        expected = model.lm_forward(ids, mask).float()
        got = exported.to(device)(input_ids=ids, attention_mask=mask).logits.float()
    diff = float((expected - got).abs().max())
    if not diff <= atol and (model.config.forward_dtype == "float32" or diff != diff):
        raise ExportError(f"{out}: the exported model's logits differ from the checkpoint's by {diff:.3g}")
    return diff
