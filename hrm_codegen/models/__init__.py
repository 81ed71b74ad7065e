"""The HRM port (a transformers model, registered with the Auto classes on import) and the transformer baseline."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from hrm_codegen.models.configuration_hrm import HRMConfig
from hrm_codegen.models.hrm_act_v1 import (
    HierarchicalReasoningModel_ACTV1,
    HrmCodegenForCausalLM,
    HrmCodegenModel,
)

AutoConfig.register(HRMConfig.model_type, HRMConfig, exist_ok=True)
AutoModel.register(HRMConfig, HrmCodegenModel, exist_ok=True)
AutoModelForCausalLM.register(HRMConfig, HrmCodegenForCausalLM, exist_ok=True)
# save_pretrained then writes `auto_map` and copies the model code, for trust_remote_code users without the package.
HRMConfig.register_for_auto_class()
HrmCodegenModel.register_for_auto_class("AutoModel")
HrmCodegenForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["HRMConfig", "HierarchicalReasoningModel_ACTV1", "HrmCodegenForCausalLM", "HrmCodegenModel"]
