"""Work handed over from a background thread: bounded, exceptions passed on, stoppable.

:class:`BackgroundQueue` is the one mechanism: extraction runs each clip's crop
producer on it (``avx.extract.run``), and :class:`Prefetch` builds training batches
ahead with it.

End-to-end batches carry raw crops and waveforms read from the store's compressed
chunks; :class:`Prefetch` builds the next ``depth`` batches in a thread (zarr's
decompression and NumPy release the GIL) while the current one trains, pinning them
for an asynchronous copy when the run is on CUDA. It records how long the consumer
waited, which ``benchmarks/end2end.py`` reports to show the overlap.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

_END = object()


class BackgroundQueue:
    """Iterate ``produce()``'s items, produced on a background thread ``depth`` ahead.

    An exception in the producer is raised by the iterator at the same point of the
    stream. :meth:`cancel` (or a consumer that stops early) releases a producer blocked
    on a full queue, so an interrupted run never leaves a thread behind.
    """

    def __init__(self, depth: int = 2) -> None:
        self._q: queue.Queue[object] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()

    def fill(self, produce: Callable[[], Iterator[object]]) -> None:
        """Run ``produce`` to the end (call on the background thread)."""
        try:
            for item in produce():
                if not self._put(item):
                    return
            self._put(_END)
        except BaseException as e:  # handed to the consumer, raised there
            self._put(e)

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def cancel(self) -> None:
        self._stop.set()

    def __iter__(self) -> Iterator[object]:
        try:
            while True:
                item = self._q.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.cancel()


class Prefetch:
    """Iterate ``items`` with up to ``depth`` of them prepared ahead in a thread.

    ``pin``: call ``item.pin_memory()`` in the thread (batches bound for CUDA).
    Exceptions in the thread are re-raised in the consumer; a consumer that stops early
    stops the thread after its current item. ``waited`` is the seconds the consumer
    spent waiting for items (0 when the producer keeps up).
    """

    def __init__(self, items: Iterable[Any], depth: int = 2, *, pin: bool = False) -> None:
        self.queue = BackgroundQueue(depth)
        self.waited = 0.0
        produce = (lambda: (x.pin_memory() for x in items)) if pin else (lambda: iter(items))
        self.thread = threading.Thread(target=self.queue.fill, args=(produce,), daemon=True)
        self.thread.start()

    def __iter__(self) -> Iterator[Any]:
        it = iter(self.queue)
        try:
            while True:
                t0 = time.perf_counter()
                try:
                    item = next(it)
                except StopIteration:
                    return
                finally:
                    self.waited += time.perf_counter() - t0
                yield item
        finally:  # a consumer that stops early releases the producer
            self.queue.cancel()
