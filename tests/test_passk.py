"""pass@k: the unbiased estimator of Chen et al. 2021 against hand-computed values."""

from fractions import Fraction
from math import comb

import pytest

from hrm_codegen.passk import mean_pass_at_k, pass_at_k


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (1, 1, 1, 1.0),
        (1, 0, 1, 0.0),
        (2, 1, 1, 0.5),  # 1 - C(1,1)/C(2,1) = 1 - 1/2
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (10, 3, 5, 1 - 21 / 252),  # 1 - C(7,5)/C(10,5)
        (10, 3, 1, 0.3),  # pass@1 is the fraction correct
        (4, 3, 2, 1.0),  # n - c < k: every draw of 2 holds a correct one
        (3, 0, 3, 0.0),
        (200, 1, 100, 0.5),  # 1 - C(199,100)/C(200,100) = 1 - 100/200
    ],
)
def test_pass_at_k_hand_computed(n: int, c: int, k: int, expected: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_exact_binomials() -> None:
    for n in range(1, 25):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - Fraction(comb(n - c, k), comb(n, k))
                assert pass_at_k(n, c, k) == pytest.approx(float(exact), abs=1e-12), (n, c, k)


def test_pass_at_k_is_stable_for_large_n() -> None:
    # C(2000, 1000) overflows a float; the product form does not.
    value = pass_at_k(2000, 3, 1000)
    assert value == pytest.approx(1 - (1000 * 999 * 998) / (2000 * 1999 * 1998), rel=1e-12)


def test_k_above_n_is_unavailable() -> None:
    assert pass_at_k(5, 5, 6) is None
    assert pass_at_k(0, 0, 1) is None


@pytest.mark.parametrize(("n", "c", "k"), [(3, 4, 1), (3, -1, 1), (-1, 0, 1), (3, 1, 0)])
def test_invalid_arguments_raise(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_mean_pass_at_k_averages_per_problem() -> None:
    means = mean_pass_at_k([(2, 1), (2, 2), (2, 0)], [1, 2, 3])
    assert means[1] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert means[2] == pytest.approx((1.0 + 1.0 + 0.0) / 3)
    assert means[3] is None


def test_mean_pass_at_k_unavailable_when_one_problem_has_too_few_samples() -> None:
    assert mean_pass_at_k([(10, 5), (1, 1)], [1, 5]) == {1: pytest.approx(0.75), 5: None}
    assert mean_pass_at_k([], [1]) == {1: None}
