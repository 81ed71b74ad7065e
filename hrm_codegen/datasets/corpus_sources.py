"""Where corpus and pair sources live: this Python's library directories, and a throwaway virtual
environment holding a list of requirements (`pip install --no-deps -r FILE`)."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

from hrm_codegen.datasets.licences import LicenceIndex, find_site_dirs


def python_lib_dirs() -> tuple[str, list[str]]:
    """This Python's standard library directory and its site-packages directories."""
    paths = sysconfig.get_paths()
    return paths["stdlib"], sorted({paths["purelib"], paths["platlib"]} - {paths["stdlib"]})


def licence_index(roots: list[str], stdlib_dirs: list[str]) -> LicenceIndex:
    """The licences of files under `roots`: distributions of every site directory found there, the stdlib."""
    return LicenceIndex(find_site_dirs(roots), stdlib_dirs)


def install_requirements(requirements: str | Path, directory: str | Path, timeout_s: float = 1800) -> Path:
    """Create a virtual environment in `directory`, pip-install `requirements` there without dependencies,
    and return its site-packages directory. Raises OSError (with pip's output) when it fails."""
    requirements, directory = Path(requirements), Path(directory)
    if not requirements.is_file():
        raise FileNotFoundError(f"requirements file {requirements} does not exist")
    commands = [
        [sys.executable, "-m", "venv", "--without-pip", str(directory)],
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(directory / "bin" / "python"),
            "install",
            "--no-deps",
            "--disable-pip-version-check",
            "--no-input",
            "-r",
            str(requirements),
        ],
    ]
    for command in commands:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        if done.returncode != 0:
            raise OSError(
                f"{' '.join(command[:4])} ... failed ({done.returncode}): {done.stderr[-2000:].strip()}"
            )
    found = sorted(directory.glob("lib/python*/site-packages"))
    if not found:
        raise OSError(f"no site-packages directory in the virtual environment {directory}")
    return found[0]
