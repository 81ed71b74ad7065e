"""The HRM port (and the transformer baseline wrapper)."""

from hrm_codegen.models.hrm_act_v1 import HierarchicalReasoningModel_ACTV1, HRMConfig
from hrm_codegen.models.layers import KVCache

__all__ = ["HRMConfig", "HierarchicalReasoningModel_ACTV1", "KVCache"]
