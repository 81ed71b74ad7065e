"""HRM-CodeGen: Sapient's Hierarchical Reasoning Model ported to autoregressive code generation."""

__version__ = "0.1.0"
