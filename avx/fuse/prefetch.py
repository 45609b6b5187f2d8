"""Background batch preparation, so the device never waits on reading and decoding.

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
from collections.abc import Iterable, Iterator
from typing import Any

_DONE = object()


class Prefetch:
    """Iterate ``items`` with up to ``depth`` of them prepared ahead in a thread.

    ``pin``: call ``item.pin_memory()`` in the thread (batches bound for CUDA).
    Exceptions in the thread are re-raised in the consumer; stopping early (``close``,
    or the iterator being dropped) stops the thread after its current item.
    """

    def __init__(self, items: Iterable[Any], depth: int = 2, *, pin: bool = False) -> None:
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
        self.stop = threading.Event()
        self.waited = 0.0
        """Seconds the consumer spent waiting for a batch (0 when loading keeps up)."""
        self.thread = threading.Thread(target=self._produce, args=(iter(items), pin), daemon=True)
        self.thread.start()

    def _put(self, item: Any) -> bool:
        """Queue ``item`` unless the consumer has stopped (then False)."""
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self, it: Iterator[Any], pin: bool) -> None:
        try:
            for item in it:
                if not self._put(item.pin_memory() if pin else item):
                    return
            self._put(_DONE)
        except BaseException as e:  # handed to the consumer
            self._put(e)

    def __iter__(self) -> Iterator[Any]:
        try:
            while True:
                t0 = time.perf_counter()
                item = self.queue.get()
                self.waited += time.perf_counter() - t0
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.close()

    def close(self) -> None:
        self.stop.set()
