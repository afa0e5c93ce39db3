"""Progress of benchmark runs as events, and the board that shows them, whichever executor runs them.

Executors and runs report events, plain dicts with an ``"event"`` key:

- ``submitted`` (``count``): the runs handed to the executor;
- ``started`` (``run_id``, ``node``, ``pid``, ``attempt``): a run began on a node (again after a retry);
- ``step`` (``run_id``, ``step``, ``total``): a training run's optimiser steps
  (:class:`~spared.bench.train.StepReporter`);
- ``finished`` (``run_id``, ``status``): the run ended; its row follows.

A run's ``progress`` argument is ``False`` (nothing), ``True`` (Lightning's own bar, in the process that trains)
or a callable receiving the events. :class:`ProgressBoard` is such a callable: one bar over the runs and one per
run in progress with its node, the same for the local and the Ray executor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: Where a run's progress goes: ``False``, ``True`` (Lightning's bar) or a callable receiving event dicts.
Progress = bool | Callable[[dict[str, Any]], None]


def report(progress: Progress, event: str, **fields: Any) -> None:
    """Send ``{"event": event, **fields}`` to ``progress`` when it is a callable."""
    if callable(progress):
        progress({"event": event, **fields})


class ProgressBoard:
    """A rich display fed by progress events: tasks finished out of those submitted, and a bar per active task
    (a run by its ``run_id``, a dataset being prepared by its ``dataset`` name) with its node.

    Use it as a context manager around the executor's work and pass it as the executor's ``progress``.

    Parameters
    ----------
    console
        Where to draw (default: a console on stderr, so that ``--json`` output on stdout stays clean).
    label
        What the tasks are (the overall bar's name).
    """

    def __init__(self, console: Any = None, label: str = "runs") -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("{task.fields[node]}"),
                                 console=console or Console(stderr=True))
        self.overall = self.progress.add_task(label, total=None, node="")
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> ProgressBoard:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, event: dict[str, Any]) -> None:
        kind, run_id = event.get("event"), event.get("run_id") or event.get("dataset", "")
        if kind == "submitted":
            self.progress.update(self.overall, total=event["count"])
        elif kind == "started":
            attempt = int(event.get("attempt", 1))
            node = str(event.get("node", "")) + (f" (attempt {attempt})" if attempt > 1 else "")
            if run_id in self.tasks:
                self.progress.reset(self.tasks[run_id], node=node)
            else:
                self.tasks[run_id] = self.progress.add_task(run_id, total=None, node=node)
        elif kind == "step":
            if run_id not in self.tasks:  # a run started by another (SEPAL's stage 1)
                self.tasks[run_id] = self.progress.add_task(run_id, total=None, node="")
            self.progress.update(self.tasks[run_id], completed=event["step"], total=event["total"])
        elif kind == "finished":
            task = self.tasks.pop(run_id, None)
            if task is not None:
                self.progress.remove_task(task)
            self.progress.advance(self.overall)
