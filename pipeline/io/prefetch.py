"""Decode ahead: an iterator of frame batches -> the same batches, produced by a background
thread while the consumer (the face detector) works on the previous one."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def prefetch(batches: Iterator[tuple[list[int], np.ndarray]], depth: int = 1
             ) -> Iterator[tuple[list[int], np.ndarray]]:
    """Decode ahead in a background thread: yields ``batches``' items while the next ones are
    being decoded (FFmpeg releases the GIL), at most ``depth`` batches held. An exception of the
    decoder is raised here; closing this generator stops the thread. ``depth`` 0: no thread, the
    batches are decoded when asked for."""
    import queue
    import threading

    if depth <= 0:
        yield from batches
        return

    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    done = object()

    def work() -> None:
        try:
            for item in batches:
                while not stop.is_set():
                    try:
                        q.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(("end", done))
        except BaseException as e:  # handed to the consumer
            q.put(("error", e))

    thread = threading.Thread(target=work, name="dfpipe-decode", daemon=True)
    thread.start()
    try:
        while True:
            kind, payload = q.get()
            if kind == "item":
                yield payload
            elif kind == "error":
                raise payload
            else:
                return
    finally:
        stop.set()
        while thread.is_alive():  # let a blocked put() finish
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.05)
        close = getattr(batches, "close", None)
        if close is not None:
            close()
