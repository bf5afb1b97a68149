"""Process-wide settings of a long-running pao process (`pao serve`, `pao worker`)."""

from __future__ import annotations

import gc


def settle_heap() -> None:
    """Take what start-up made (modules, classes, functions: some 120,000 objects that live as long as
    the process) out of the cyclic garbage collector's view. Call once, after the imports, before the
    event loop starts; a program that embeds the engine can call it the same way.

    Otherwise every full collection walks all of them again: on a no-op drain that was a third of a
    worker's CPU (11 full collections of ~75 ms for 20,000 runs), and freezing them raised the drain
    from ~9,000 to ~13,000 runs/s (`bench/throughput.py --concurrency 256 --rounds 1`). Garbage made
    at start-up is collected first, so nothing unreachable is kept.
    """
    gc.collect()
    gc.freeze()
