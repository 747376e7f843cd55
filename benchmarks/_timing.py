"""Interleaved timing rounds, shared by the format benchmarks (bench_dmrpp, bench_fits, bench_hdf4).

The machine is shared and its load changes from second to second, so peers
are not timed one after the other: in every round they take turns over the
same batch of files, and a change in load hits all of them alike. Figures
are medians over rounds; a ratio is the median of the per-round ratios.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

Method = Callable[[Sequence[Any]], object]


def working(methods: Mapping[str, Method], items: Sequence[Any],
            errors: tuple[type[BaseException], ...] = (ImportError,)) -> dict[str, Method]:
    """The methods that run on ``items`` (which warms their imports and caches); the others are named and left out."""
    kept = {}
    for name, method in methods.items():
        try:
            method(items)
        except errors as err:
            print(f"{name}: skipped ({type(err).__name__}: {err})")
            continue
        kept[name] = method
    return kept


def timed(method: Method, items: Sequence[Any]) -> float:
    """Seconds one call of ``method`` over ``items`` takes."""
    start = time.perf_counter()
    method(items)
    return time.perf_counter() - start


def interleaved_rounds(methods: Mapping[str, Method], items: Sequence[Any], repeats: int, batch: int,
                       alone: Collection[str] = ()) -> dict[str, list[float]]:
    """Seconds per round of each method over all ``items``, ``repeats`` rounds.

    In a round the methods take turns ``batch`` items at a time; those named
    in ``alone`` (slow peers shown for reference) then run over all items at
    once, after the others.
    """
    turns = [name for name in methods if name not in alone]
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        totals = dict.fromkeys(turns, 0.0)
        for start in range(0, len(items), batch):
            for name in turns:
                totals[name] += timed(methods[name], items[start : start + batch])
        for name in methods:
            times[name].append(totals[name] if name in totals else timed(methods[name], items))
    return times


def ratio(ours: Sequence[float], peer: Sequence[float]) -> float:
    """How many times faster we are than ``peer``: the median of the per-round ratios."""
    return statistics.median(b / a for a, b in zip(ours, peer))
