"""What the user sees while spadecam runs: progress bars, per-epoch lines and warnings.

Warnings about inputs and outputs (a file skipped, a file replaced, a threshold set by too
few images) are :class:`SpadecamWarning`; the CLI prints them as ``spadecam: warning: ...``,
Python users can filter them with the ``warnings`` module.

A tqdm bar redraws itself with carriage returns; under ``nohup``, in CI or piped to a file
every redraw becomes text (about 60 lines of several thousand characters for one fit). So
bars are drawn only when stderr is a terminal (or in a Jupyter kernel, where tqdm draws a
widget); elsewhere the training loops print one plain line per epoch (:func:`note`) and
the other bars stay silent.
"""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm.auto import tqdm

__all__ = ["SpadecamWarning", "bar", "heartbeat", "interactive", "note", "tick", "warn"]

#: Seconds after a line before the next heartbeat line (:func:`heartbeat`): 20, so that with
#: one batch of work between two checks (a few seconds) no gap reaches 30 s.
HEARTBEAT_SECONDS = 20.0
_heartbeat: dict[str, float] = {}  # "every" and "last" while a heartbeat is on


class SpadecamWarning(UserWarning):
    """Something the user should know about inputs or outputs; the run goes on."""


def warn(message: str) -> None:
    """Issue a :class:`SpadecamWarning` attributed to the caller's caller."""
    warnings.warn(message, SpadecamWarning, stacklevel=3)


def interactive() -> bool:
    """True when a progress bar can redraw in place: stderr is a TTY, or a Jupyter kernel."""
    isatty = getattr(sys.stderr, "isatty", None)
    try:
        if isatty is not None and isatty():
            return True
    except ValueError:  # a closed stream
        return False
    return "ipykernel" in sys.modules


def bar(iterable: Iterable | None = None, *, enabled: bool, **kwargs: Any) -> tqdm:
    """A tqdm bar (``leave=False``) shown only when ``enabled`` and :func:`interactive`."""
    kwargs.setdefault("leave", False)
    return tqdm(iterable, disable=not (enabled and interactive()), **kwargs)


@contextlib.contextmanager
def heartbeat(every: float | None = None) -> Iterator[None]:
    """While the block runs, :func:`tick` writes a line (what the run is doing) whenever
    ``every`` seconds (default :data:`HEARTBEAT_SECONDS`) have passed since the last line,
    bars or not: ``spadecam train`` says what it is doing at least every 30 s, even under
    ``--no-progress``. Outside the block :func:`tick` is silent (the Python API prints
    nothing it was not asked for)."""
    before = dict(_heartbeat)
    every = HEARTBEAT_SECONDS if every is None else every
    _heartbeat.update(every=float(every), last=time.monotonic())
    try:
        yield
    finally:
        _heartbeat.clear()
        _heartbeat.update(before)


def tick(message: str) -> None:
    """Under :func:`heartbeat`, write ``message`` if its interval has passed since the last
    line."""
    if not _heartbeat:
        return
    now = time.monotonic()
    if now - _heartbeat["last"] >= _heartbeat["every"]:
        _heartbeat["last"] = now
        note(message)


def note(message: str) -> None:
    """One line on stderr: through tqdm when a bar may be open (keeps it intact), else plain."""
    if interactive():
        tqdm.write(message, file=sys.stderr)
    else:
        print(message, file=sys.stderr, flush=True)
    if _heartbeat:  # any line resets the heartbeat's interval
        _heartbeat["last"] = time.monotonic()
