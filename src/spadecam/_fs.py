"""Writing files: atomically (temp file, then rename), and together or not at all.

The one atomic writer of the package (model directories, CSV, JSON, PNG overlays, figures,
the MNIST download: :func:`atomic_write`; JSON: :mod:`spadecam._json`). Standard library.

Why not :func:`tempfile.mkstemp`: it creates the temp file with mode 0600 whatever the
umask, and ``os.replace`` keeps that mode, so every output would be private to its owner
(others could not read a shared model directory). The temp file here is created like a
plain ``open(path, "w")`` would create ``path``: mode 0666 minus the caller's umask.

All or nothing: inside :func:`outputs` (each CLI command runs in one) every file written or
moved into place is recorded, a file it replaces is kept aside, and the folders it creates are
noted; when the block fails or is interrupted, all of it is undone (the old files come back,
the new folders go), otherwise the old files are deleted. :class:`Staging` writes a set of
files to a hidden folder first and moves them in together (the overlays of ``spadecam
score``, the model directory of ``spadecam train``), with Ctrl-C held back while they move.
A write that fails raises :class:`WriteError`, naming the file and the option it belongs to.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import secrets
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "Staging",
    "WriteError",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "interrupts_held",
    "make_dirs",
    "outputs",
    "write_error",
]

class WriteError(OSError):
    """An output file or folder that could not be written.

    Its message names the file, the command's option it belongs to (where the command named
    its outputs with :func:`outputs`), the reason and the errno, e.g. ``--maps ov: cannot
    write ov/a.png: No space left on device (errno 28)``. Attributes: ``path`` (the file),
    ``errno`` and ``reason`` (the operating system's words) of the cause.
    """

    path: Path
    reason: str


def write_error(path: str | os.PathLike, exc: OSError) -> WriteError:
    """A :class:`WriteError` for ``path`` failing with ``exc`` (an OSError or a WriteError of
    another path, e.g. a staged file's), naming the option whose output ``path`` is."""
    path = Path(path)
    reason = getattr(exc, "reason", None) or exc.strerror or str(exc)
    code = f" (errno {exc.errno})" if exc.errno else ""
    tx = _ACTIVE.get()
    named = tx.option_of(path) if tx is not None else None
    if named is None:
        text = f"cannot write {path}: {reason}{code}"
    elif _absolute(named[1]) == _absolute(path):
        text = f"{named[0]} {path} cannot be written: {reason}{code}"
    else:
        text = f"{named[0]} {named[1]}: cannot write {path}: {reason}{code}"
    err = WriteError(text)
    err.errno, err.path, err.reason = exc.errno, path, reason
    return err


def _absolute(path: str | os.PathLike) -> str:
    return os.path.abspath(path)


def _missing(path: Path) -> list[Path]:
    """``path`` and its ancestors that do not exist (yet), deepest first."""
    out = []
    for p in (path, *path.parents):
        if os.path.lexists(p):
            break
        out.append(p)
    return out


class _Held:
    """Whether a Ctrl-C (SIGINT) arrived while :func:`interrupts_held` held it back."""

    pending = False


_HELD: list[_Held] = []


@contextlib.contextmanager
def interrupts_held() -> Iterator[_Held]:
    """Hold Ctrl-C (SIGINT) back during the block: one that arrives is recorded
    (``state.pending``) and delivered once the block ends (KeyboardInterrupt under Python's
    own handler), unless the block raised. Loops check ``pending`` to stop at a safe point.
    Nested blocks share the outer one's state. Only the main thread receives signals; in
    other threads nothing is held. A process that ignores SIGINT (started in the background
    by a shell, or under ``nohup``-style wrappers) keeps ignoring it: nothing is recorded.
    """
    state = _Held()
    if threading.current_thread() is not threading.main_thread():
        yield state  # only the main thread holds (and shares) the interrupt state
        return
    if _HELD:
        yield _HELD[-1]
        return

    def hold(_signum: int, _frame: Any) -> None:
        state.pending = True

    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        yield state  # an ignored Ctrl-C stays ignored: no stop at a safe point either
        return
    try:
        previous = signal.signal(signal.SIGINT, hold)
    except ValueError:  # not the main interpreter's main thread
        yield state
        return
    _HELD.append(state)
    try:
        yield state
    finally:
        _HELD.pop()
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)
    if state.pending:  # the block ended normally: deliver the interrupt now
        if callable(previous):
            previous(signal.SIGINT, None)
        elif previous == signal.SIG_DFL:
            signal.raise_signal(signal.SIGINT)
        elif previous != signal.SIG_IGN:
            raise KeyboardInterrupt


class _Outputs:
    """What one :func:`outputs` block wrote: files moved into place (each with the file it
    replaced, kept aside), folders it created and the options its outputs belong to."""

    def __init__(self, undo: bool = True) -> None:
        self.undo = undo
        self.options: list[tuple[str, Path]] = []
        self.moved: list[tuple[Path, Path | None]] = []  # (target, the old file kept aside)
        self.made: list[Path] = []

    def name(self, option: str, path: str | os.PathLike) -> None:
        """Record ``path`` as the output of ``option``; its missing folders are new ones."""
        p = Path(path)
        self.options.append((option, p))
        self.made += _missing(p)

    def option_of(self, path: Path) -> tuple[str, Path] | None:
        """(option, its path) of the output holding ``path`` (the most specific one)."""
        a = _absolute(path)
        best: tuple[str, Path] | None = None
        for option, root in self.options:
            r = _absolute(root)
            if (a == r or a.startswith(r.rstrip(os.sep) + os.sep)) and (
                    best is None or len(r) > len(_absolute(best[1]))):
                best = (option, root)
        return best

    def holds(self, path: Path) -> bool:
        """Whether ``path`` is one of this block's outputs (at or under a named one); other
        files (a cache) are written as outside a block."""
        return self.undo and self.option_of(path) is not None

    def mkdir(self, folder: Path) -> None:
        missing = _missing(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.made += missing

    def _aside(self, path: Path, link: bool) -> Path:
        """A hidden name beside ``path`` holding its file: a hard link (``path`` stays in
        place) or, where links fail or ``link`` is False, ``path`` renamed."""
        for _ in range(100):
            backup = path.with_name(f".{path.name}.{secrets.token_hex(4)}.spadecam-old")
            if os.path.lexists(backup):
                continue
            if link and not path.is_symlink():
                try:
                    os.link(path, backup)
                    return backup
                except FileExistsError:
                    continue
                except OSError:
                    pass  # no hard links here: rename it
            os.rename(path, backup)
            return backup
        raise FileExistsError(f"{path.parent}: could not keep {path.name} aside")

    def replace(self, src: Path, dst: Path) -> None:
        """``os.replace(src, dst)``, the file ``dst`` held kept aside until the end."""
        backup = None
        try:
            with interrupts_held():
                if dst.is_file() or dst.is_symlink():
                    backup = self._aside(dst, link=True)
                try:
                    os.replace(src, dst)
                except BaseException:
                    if not os.path.lexists(src):  # it moved: the rollback takes it back
                        self.moved.append((dst, backup))
                    elif backup is not None:  # dst was not replaced: drop (or return) its copy
                        if os.path.lexists(dst):
                            backup.unlink()
                        else:
                            os.rename(backup, dst)
                    raise
                self.moved.append((dst, backup))
        except OSError as exc:
            raise write_error(dst, exc) from exc

    def remove(self, path: Path) -> None:
        """Take the file ``path`` away (kept aside until the end, restored on failure)."""
        try:
            with interrupts_held():
                backup = self._aside(path, link=False)
                self.moved.append((path, backup))
        except OSError as exc:
            raise write_error(path, exc) from exc

    def rollback(self) -> None:
        if not self.undo:
            return
        for dst, backup in reversed(self.moved):
            with contextlib.suppress(OSError):
                if backup is not None:
                    os.replace(backup, dst)
                elif not dst.is_dir() or dst.is_symlink():
                    dst.unlink(missing_ok=True)
        self.moved.clear()
        for folder in sorted(set(self.made), key=lambda p: len(Path(_absolute(p)).parts),
                             reverse=True):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only an empty one: never anything this block did not write
        self.made.clear()

    def finish(self) -> None:
        for _dst, backup in self.moved:
            if backup is not None:
                with contextlib.suppress(OSError):
                    backup.unlink()
        self.moved.clear()
        self.made.clear()


_ACTIVE: contextvars.ContextVar[_Outputs | None] = contextvars.ContextVar(
    "spadecam_outputs", default=None)


@contextlib.contextmanager
def outputs(*named: tuple[str, str | os.PathLike | None], undo: bool = True
            ) -> Iterator[_Outputs]:
    """A block whose outputs are written all together or not at all.

    Every file :func:`atomic_write` puts in place inside the block at or under a ``named``
    path (other files, a cache, are written as outside a block), and every file
    :class:`Staging` moves in, is recorded, with the file it replaces kept aside under a
    hidden name, and the folders they create are noted. When the block raises (an error,
    Ctrl-C) each new file is removed, each replaced one put back and each folder created
    since removed if empty, Ctrl-C held back meanwhile; when it ends normally the kept files
    are deleted. A block inside another one joins it (the outer one decides).

    Parameters
    ----------
    *named : (option, path) pairs, e.g. ``("--maps", maps)``; a None path is skipped
        The command's outputs: a :class:`WriteError` for a file at or under ``path`` names
        ``option``; the folders of ``path`` missing now are removed again on failure.
    undo : bool
        False: the block only names the options in errors and undoes nothing (a long
        benchmark keeps what it wrote); a block inside it is then a block of its own.

    Raises
    ------
    Whatever the block raises, after the undoing.
    """
    outer = _ACTIVE.get()
    if outer is not None and outer.undo:
        for option, path in named:
            if path is not None:
                outer.name(option, path)
        yield outer
        return
    tx = _Outputs(undo)
    if outer is not None:  # an outer block that undoes nothing: its options still name
        tx.options += outer.options
    for option, path in named:
        if path is not None:
            tx.name(option, path)
    token = _ACTIVE.set(tx)
    try:
        try:
            yield tx
        except BaseException:
            with interrupts_held():
                tx.rollback()
            raise
        with interrupts_held():
            tx.finish()
    finally:
        _ACTIVE.reset(token)


def make_dirs(folder: str | os.PathLike) -> Path:
    """``folder`` and its missing parents created (mode 0777 & ~umask), recorded by the
    :func:`outputs` block in progress; returns it as a Path. Raises OSError."""
    folder = Path(folder)
    tx = _ACTIVE.get()
    if tx is not None and tx.holds(folder):
        tx.mkdir(folder)
    else:
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def _put(src: Path, dst: Path) -> None:
    """``os.replace(src, dst)``, recorded by the :func:`outputs` block in progress."""
    tx = _ACTIVE.get()
    if tx is not None and tx.holds(dst):
        tx.replace(src, dst)
    else:
        os.replace(src, dst)


class Staging:
    """Files written to a hidden folder of ``folder`` first, then moved in together.

    ``stage`` is the hidden folder (created at once, with ``folder`` if missing). Write there
    (inside :meth:`named`, so a failed write names the file it was for), then
    :meth:`commit`: every staged file is renamed into place (one file system, so each
    rename is atomic; a replaced file keeps its mode, as ``open`` would) inside an
    :func:`outputs` block with Ctrl-C held back, so either all of them are in place or,
    after a failure or an interruption, none (the files they replaced are back).
    :meth:`discard` removes the hidden folder.

    Raises
    ------
    WriteError
        ``folder`` or the hidden folder cannot be created.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        tx = _ACTIVE.get()
        try:
            if tx is not None and tx.undo:  # a folder created for staged files goes with them
                tx.mkdir(self.folder)
            else:
                make_dirs(self.folder)
            self.stage = Path(tempfile.mkdtemp(prefix=".spadecam-staging-", dir=self.folder))
        except OSError as exc:
            raise write_error(self.folder, exc) from exc

    @contextlib.contextmanager
    def named(self) -> Iterator[None]:
        """A :class:`WriteError` for a staged file re-raised naming its place in ``folder``."""
        try:
            yield
        except WriteError as exc:
            if not exc.path.is_relative_to(self.stage):
                raise
            raise write_error(self.folder / exc.path.relative_to(self.stage),
                              exc) from exc.__cause__

    def commit(self, names: Sequence[str | os.PathLike] | None = None,
               remove: Iterable[str | os.PathLike] = ()) -> None:
        """Move the staged files ``names`` (relative to the stage; None: all, sorted) into
        ``folder`` in that order, then take the files ``remove`` away (kept aside until the
        :func:`outputs` block ends); all or none of it. Raises WriteError or
        KeyboardInterrupt (everything undone)."""
        if names is None:
            names = sorted(p.relative_to(self.stage) for p in self.stage.rglob("*")
                           if p.is_file())
        with outputs() as tx, interrupts_held() as held:
            for n in names:
                src, dst = self.stage / n, self.folder / n
                try:
                    tx.mkdir(dst.parent)
                    if dst.is_file():  # as open() would: a replaced file keeps its mode
                        os.chmod(src, stat.S_IMODE(dst.stat().st_mode))
                except OSError as exc:
                    raise write_error(dst, exc) from exc
                tx.replace(src, dst)
                if held.pending:  # Ctrl-C: stop here, the block undoes what moved
                    raise KeyboardInterrupt
            for p in remove:
                tx.remove(Path(p))
                if held.pending:
                    raise KeyboardInterrupt
        self.discard()

    def discard(self) -> None:
        shutil.rmtree(self.stage, ignore_errors=True)


def _create_temp(folder: Path, name: str, suffix: str) -> Path:
    """A new empty file beside the target, mode 0666 & ~umask (as ``open`` creates one)."""
    for _ in range(100):
        tmp = folder / f".{name}.{secrets.token_hex(4)}{suffix}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"{folder}: could not create a temp file for {name}")


def check_writable(path: str | os.PathLike, option: str, folder: bool = False) -> None:
    """ValueError naming ``option`` unless ``path`` (a file, or a folder with ``folder``) can be
    written: every part of it that exists is a folder (its last part too, for a folder; not a
    folder, for a file) and the deepest existing folder is writable. Creates nothing, so a
    command can check its outputs before any work and leave no trace when it then fails.
    """
    p = Path(path)
    if p.exists():
        if folder and not p.is_dir():
            raise ValueError(f"{option} {p} exists and is not a folder")
        if not folder and p.is_dir():
            raise ValueError(f"{option} {p} is a folder; give a file name")
    base = p if (folder and p.is_dir()) else p.parent
    while not base.exists():
        base = base.parent
    if not base.is_dir():
        raise ValueError(f"{option} {p} cannot be written: {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {p} cannot be written: no write permission in {base}")


def atomic_write(
    path: str | os.PathLike, write: Callable[[str], object], suffix: str = ".tmp"
) -> Path:
    """Call ``write(temp_path)`` and rename the temp file to ``path`` once it succeeded.

    Parameters
    ----------
    path : target file; its folder is created if missing (mode 0777 & ~umask)
    write : callable taking the temp file's path (str) and writing the whole content there
    suffix : str
        Suffix of the temp file (some writers pick the format from it, e.g. ``".png"``).

    Returns
    -------
    pathlib.Path of the written file. Its mode is what a plain ``open(path, "w")`` would
    give: 0666 minus the current umask for a new file (0644 with umask 022), the old mode for
    a file that is replaced. An existing file is replaced whole, never partly written.

    Inside an :func:`outputs` block the file is recorded there: removed again (or the file
    it replaced put back) when the block fails.

    Raises
    ------
    WriteError
        An OSError while creating, writing or renaming (a full disk, no permission), as a
        WriteError naming ``path`` (and its option, inside :func:`outputs`); the temp file
        is removed first.
    Whatever else ``write`` raises (the temp file is removed first).
    """
    path = Path(path)
    try:
        make_dirs(path.parent)
        tmp = _create_temp(path.parent, path.name, suffix)
    except OSError as exc:
        raise write_error(path, exc) from exc
    try:
        if path.is_file():  # as open() would: a replaced file keeps its mode
            os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
        write(str(tmp))
        _put(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):
            raise write_error(path, exc) from exc
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda p: Path(p).write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically."""

    def write(p: str) -> None:
        with open(p, "w", encoding="utf-8", newline="") as f:
            f.write(text)

    return atomic_write(path, write)
