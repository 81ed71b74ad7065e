"""The unbiased pass@k estimator of Chen et al. 2021 ("Evaluating Large Language Models Trained on Code")."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def pass_at_k(n: int, c: int, k: int) -> float | None:
    """Probability that at least one of k samples drawn from n (c of them correct) passes; None when k > n.

    1 - C(n-c, k) / C(n, k), computed as 1 - prod_{i=n-c+1..n} (1 - k/i) so that no binomial overflows.
    """
    if n < 0 or not 0 <= c <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n, got n={n}, c={c}")
    if k < 1:
        raise ValueError(f"pass_at_k needs k >= 1, got k={k}")
    if k > n:
        return None
    if n - c < k:
        return 1.0
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1.0 - k / i
    return 1.0 - product


def mean_pass_at_k(counts: Sequence[tuple[int, int]], ks: Iterable[int]) -> dict[int, float | None]:
    """pass@k per problem from its (n, c), averaged over problems; None for a k above some problem's n."""
    means: dict[int, float | None] = {}
    for k in ks:
        values = [pass_at_k(n, c, k) for n, c in counts]
        known = [value for value in values if value is not None]
        means[k] = sum(known) / len(known) if known and len(known) == len(values) else None
    return means
