"""Benchmarks and training data: problems (evaluator interface), mbpp, humaneval, cache (encoded-data cache).

Import the submodules directly; this package stays light so that `problems` does not pull in torch.
"""
