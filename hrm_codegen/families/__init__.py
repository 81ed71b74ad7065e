"""Model families behind one seam (see `base.py`); importing this package registers the built-in ones."""

from hrm_codegen.families import hrm, hrm_text, transformers_lm
from hrm_codegen.families.base import (
    FAMILIES,
    Generated,
    GenerationRequest,
    ModelFamily,
    TrainState,
    get_family,
    register_family,
)

__all__ = [
    "FAMILIES",
    "Generated",
    "GenerationRequest",
    "ModelFamily",
    "TrainState",
    "get_family",
    "hrm",
    "hrm_text",
    "register_family",
    "transformers_lm",
]
