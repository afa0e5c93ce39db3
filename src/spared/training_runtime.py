"""What every training loop of spared (SpaCKLE, the benchmark) runs inside: its torch threads, a quiet Lightning."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

#: Lightning messages that say nothing to a user of spared (we load data in-process on purpose).
_NOISE = (".*does not have many workers.*", ".*LeafSpec.*")


@contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Run torch on ``threads`` CPU threads (``None``: every core this process may use), then restore."""
    import torch

    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or available)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


@contextmanager
def quiet_lightning(messages: Iterable[str] = (), categories: Iterable[type[Warning]] = ()) -> Iterator[None]:
    """Silence Lightning's banners and tips, and the warnings matching ``messages`` (regexes) or ``categories``.

    Warnings of substance stay; the loggers' levels are restored on exit.
    """
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.WARNING)
        with warnings.catch_warnings():
            for message in (*_NOISE, *messages):
                warnings.filterwarnings("ignore", message=message)
            for category in categories:
                warnings.filterwarnings("ignore", category=category)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
