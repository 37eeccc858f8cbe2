"""The cyclic garbage collector, tuned for a process that moves money in groups.

A group of 1,000 transactions allocates a few hundred thousand short-lived objects
(records, rows, answers), nearly none of them in reference cycles; with CPython's default
thresholds (a young collection every 700 allocations, older generations rescanned as they
fill up) the collector walked the whole heap many times per group, about a fifth of a
group's time (`docs/BENCHMARKS.md`). Processes that serve or import call `tune()` once,
after start-up (the `setapay` console command, not `main()` called in-process by tests;
each uvicorn worker as it loads `api/main.py`): what start-up loaded (modules, settings, the catalog) is frozen out of
every later collection, and young collections run every `YOUNG_THRESHOLD` allocations.
Reference counting still frees everything that is not in a cycle at once; cycles are still
collected, just less often.
"""

from __future__ import annotations

import gc

# Allocations (net of frees) between young collections (CPython's default: 700). A group in
# flight holds a few hundred thousand live objects: at 50,000 a busy API process ran a young
# collection every group or so, each walking the group's live rows (5 to 50 ms, ~7% of the
# process's CPU in batch posting, `docs/BENCHMARKS.md`); at 500,000 a group's rise and fall of
# allocations stays under the line and young collections come from lasting growth only.
YOUNG_THRESHOLD = 500_000
OLDER_THRESHOLDS = (20, 20)  # young collections per middle one, middle ones per full one


_tuned = False


def tune() -> None:
    """Once per process: collect what is garbage now (frozen cycles would never be
    collected), freeze the rest, raise the thresholds."""
    global _tuned
    if _tuned:
        return
    _tuned = True
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)


def settle() -> None:
    """In a process that called `tune`: freeze also what it has built since and will keep for a
    while (the demo's application, configured before its day is posted), as `tune` froze
    start-up's. Frozen objects are never collected: once they are let go, `release`. No-op in a
    process that never tuned (tests running the demo in-process)."""
    if _tuned:
        gc.collect()
        gc.freeze()


def release() -> None:
    """After what `settle` froze is let go (the demo over, its application dropped): everything
    frozen goes back under collection, the garbage among it is collected (the application's
    reference cycles), and what is still alive is frozen again. No-op unless tuned."""
    if _tuned:
        gc.unfreeze()
        gc.collect()
        gc.freeze()
