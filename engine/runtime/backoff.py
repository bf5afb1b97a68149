"""How long a failed run waits before its next attempt."""

from __future__ import annotations

import random

from pao_orchestrator.vocabulary import BackoffStrategy


def backoff_delay(
    strategy: BackoffStrategy,
    attempt: int,
    *,
    base: float,
    cap: float,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based), never above `cap`.

    `exponential_jitter` is "equal jitter": half the exponential delay is kept and
    the other half is random, so retries of many runs spread out without ever
    collapsing to an immediate retry.
    """
    n = max(attempt, 1)
    if strategy == BackoffStrategy.NONE:
        return 0.0
    if strategy == BackoffStrategy.FIXED:
        delay = base
    elif strategy == BackoffStrategy.LINEAR:
        delay = base * n
    else:
        delay = base * 2 ** min(n - 1, 62)
    delay = min(delay, cap)
    if strategy == BackoffStrategy.EXPONENTIAL_JITTER:
        half = delay / 2
        delay = half + (rng or random).uniform(0, half)
    return delay
