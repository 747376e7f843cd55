"""Persisted blocks still held by a dask.distributed cluster, for writers that write them in place.

``ManifestArray.persist()`` on a ``distributed.Client`` leaves every block's
encoded bytes (a ``vzdask.chunk_tasks.EncodedBlock``) on the worker that fetched it.
The writers submit tasks that depend on those futures, so each task runs on
the worker holding its block and the bytes never pass through the client.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vzdask.chunk_tasks import BlockLayout
from vzdask.manifests.array import ManifestArray


@dataclass(frozen=True)
class HeldBlocks:
    """The persisted blocks of one array, as futures on a distributed cluster.

    ``futures[k]`` is the block ``layout.indices()`` yields k-th (C order of
    the block grid).
    """

    client: Any
    layout: BlockLayout
    futures: tuple
    missing: bool  # whether any chunk of the array is missing (reads as the fill value)

    @classmethod
    def of(cls, array: ManifestArray) -> HeldBlocks | None:
        """The array's blocks if it is persisted on a distributed cluster and not gathered, else None."""
        if array.persisted is None:
            return None
        try:
            from distributed import Future
        except ImportError:
            return None
        futures = tuple(array.persisted.blocks())
        if not futures or not all(isinstance(f, Future) for f in futures):
            return None
        # persisted chunks are all inlined except the source's missing ones, which the client still knows
        missing = array.count()["missing"] > 0
        return cls(futures[0].client, array.layout, futures, missing)

    def origin(self, index: Sequence[int]) -> tuple[int, ...]:
        """The first chunk of block ``index`` in the array's chunk grid."""
        return tuple(s.start for s in self.layout.grid_slices(index))

    def holders(self) -> list[list[str]]:
        """The addresses of the workers holding each block, once persisting is done (empty for a failed block)."""
        wait_all(self.futures)
        who_has = self.client.who_has(list(self.futures))
        return [list(who_has.get(f.key, ())) for f in self.futures]

    def blocks_for_flat_range(self, start: int, stop: int) -> list[int]:
        """Which blocks (positions in ``futures``) hold the chunks ``start:stop`` of the grid in flat C order."""
        grid, block = self.layout.grid or (1,), self.layout.block or (1,)
        nblocks = self.layout.nblocks or (1,)
        chunk = np.unravel_index(np.arange(start, stop), grid)
        owner = np.ravel_multi_index(tuple(c // b for c, b in zip(chunk, block)), nblocks)
        return np.unique(owner).tolist()


def wait_all(futures: Sequence) -> None:
    """Wait until every task has finished, failed or been cancelled."""
    if futures:
        from distributed import wait

        wait(list(futures))


def wait_and_raise(futures: Sequence, describe: Callable[[int], str]) -> None:
    """Wait until every task has finished or failed, then raise for the first failure.

    Waiting for all of them first means no task is still writing when the
    caller cleans up after the error.
    """
    wait_all(futures)
    for i, future in enumerate(futures):
        if future.status == "finished":
            continue
        error = future.exception() if future.status == "error" else None
        detail = f"{type(error).__name__}: {error}" if error is not None else f"the task was {future.status}"
        raise RuntimeError(f"{describe(i)} failed on the cluster: {detail}") from error


def tree_reduce(client, futures: Sequence, combine: Callable, split_every: int = 8):
    """Combine results on the cluster, ``split_every`` at a time, and return the final one here."""
    level = list(futures)
    while len(level) > 1:
        groups = [level[i : i + split_every] for i in range(0, len(level), split_every)]
        level = [client.submit(combine, *group, pure=False) for group in groups]
    return level[0].result()


__all__ = ["HeldBlocks", "tree_reduce", "wait_all", "wait_and_raise"]
