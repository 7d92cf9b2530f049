"""The statistics every report uses: the 95% Wilson interval of a rate (harness.metrics writes it as text), the
paired exact test that says whether two students differ on the same tasks, and the unbiased pass@k.

statsmodels computes the interval and the test; pass@k is the three-line estimator of Chen et al. (2021), "Evaluating
Large Language Models Trained on Code", eq. 1, written here because no installed library exports it.
"""
from __future__ import annotations

from math import comb

CONFIDENCE = 0.95
SIGNIFICANCE = 1 - CONFIDENCE  # a paired test's p below it is a difference; above it, noise
PASS_AT = (1, 5, 10)  # the k of every pass@k report (flip curve, flip passk), each where enough runs were sampled


def wilson(successes: int, trials: int) -> tuple[float, float] | None:
    """The 95% Wilson score interval of successes/trials (None for no trials)."""
    if trials <= 0:
        return None
    from statsmodels.stats.proportion import proportion_confint

    low, high = proportion_confint(successes, trials, alpha=1 - CONFIDENCE, method="wilson")
    return round(float(low), 4), round(float(high), 4)


def mcnemar_exact(first: list[bool], second: list[bool]) -> float:
    """Two-sided exact McNemar p-value of two paired outcome lists (the same tasks, in the same order): the binomial
    test on the tasks where exactly one of the two succeeded. 1.0 when they never disagree."""
    if len(first) != len(second):
        raise ValueError(f"paired outcomes differ in length: {len(first)} vs {len(second)}")
    only_first = sum(1 for a, b in zip(first, second) if a and not b)
    only_second = sum(1 for a, b in zip(first, second) if b and not a)
    if only_first + only_second == 0:
        return 1.0
    from statsmodels.stats.contingency_tables import mcnemar

    both = sum(1 for a, b in zip(first, second) if a and b)
    neither = len(first) - both - only_first - only_second
    return float(mcnemar([[both, only_first], [only_second, neither]], exact=True).pvalue)


def pass_at_k(samples: int, correct: int, k: int) -> float:
    """The unbiased estimate of P(at least one of k samples is correct) from `samples` draws of which `correct` were:
    1 - C(n-c, k) / C(n, k)."""
    if not 0 <= correct <= samples or not 1 <= k <= samples:
        raise ValueError(f"pass@{k} needs 1 <= k <= n and 0 <= c <= n (n={samples}, c={correct})")
    if samples - correct < k:
        return 1.0
    return 1.0 - comb(samples - correct, k) / comb(samples, k)
