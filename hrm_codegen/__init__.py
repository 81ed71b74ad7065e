"""HRM-CodeGen: Sapient's Hierarchical Reasoning Model ported to autoregressive code generation."""

__version__ = "0.1.0"

# The HRM is a transformers model: importing the package registers it with AutoConfig / AutoModelForCausalLM.
from hrm_codegen import models as _models  # noqa: E402, F401
