"""What can go wrong for a user, and the exit status each kind gets.

Library code raises where a value is defined (a config's ``__post_init__``, a loader) with a
message that names the problem and the fix; it never prints or exits. ``dynacomp.cli.main`` is the
one place that turns an exception into one line on stderr and an exit status (``describe``):

* 2, a usage error: the command asks for something impossible (an option out of range, an unknown
  name, an empty prompt): ``UsageError`` and any other ``ValueError``, which is what config
  dataclasses raise; argparse's own errors exit 2 too.
* 1, a failure: the command is well formed, but what it names cannot be used (a missing,
  unreadable, non-UTF-8 or empty file, a folder of the wrong kind, a model that is not here) or
  the machine runs out of memory: ``Failure``, ``OSError``, ``UnicodeDecodeError``, out of memory.
  Anything else is a bug: its type and message, and a hint to rerun with ``--debug``.
* 130, interrupted (Ctrl-C); an interrupted training run says which checkpoint it kept.
"""

from __future__ import annotations

import sys

USAGE, FAILURE, INTERRUPTED = 2, 1, 130


class UsageError(ValueError):
    """The command line (or a config) asks for something impossible: exit status 2."""


class UnknownName(UsageError, KeyError):
    """A name that is not in a registry (a corpus, a method); still a ``KeyError`` for lookups."""

    def __str__(self) -> str:   # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class Failure(RuntimeError):
    """What the command names exists in words but cannot be used here: exit status 1."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with a message on what was kept (e.g. a training run's last checkpoint)."""


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _out_of_memory(err: BaseException) -> bool:
    torch = sys.modules.get("torch")
    return isinstance(err, MemoryError) or (torch is not None and isinstance(err, torch.OutOfMemoryError))


def describe(err: BaseException) -> tuple[int, str]:
    """``(exit status, one line for stderr)`` of an exception that reached the command line."""
    message = _one_line(str(err))
    if isinstance(err, KeyboardInterrupt):
        return INTERRUPTED, f"interrupted: {message}" if message else "interrupted"
    if isinstance(err, UnicodeDecodeError):   # a ValueError, but about a file, not the command line
        return FAILURE, (f"error: a file is not UTF-8 text ({err.reason} at byte offset {err.start}): "
                         "convert it to UTF-8, or pass another file")
    if isinstance(err, (UsageError, ValueError)):
        return USAGE, f"error: {message}"
    if _out_of_memory(err):
        first = message.split(". ")[0]
        return FAILURE, (f"error: out of memory ({first}): use a smaller batch size or context, "
                         "or a machine with more memory")
    if isinstance(err, OSError) and err.filename is not None:
        name = err.filename
        if isinstance(err, FileNotFoundError):
            return FAILURE, f"error: {name} does not exist: check the path"
        if isinstance(err, PermissionError):
            return FAILURE, f"error: permission denied for {name}: check its permissions, or pass another path"
        if isinstance(err, IsADirectoryError):
            return FAILURE, f"error: {name} is a folder where a file is expected: pass a file"
        if isinstance(err, NotADirectoryError):
            return FAILURE, f"error: {name} is a file where a folder is expected: pass a folder"
        return FAILURE, f"error: {name}: {err.strerror or message}"
    if isinstance(err, (Failure, OSError)):
        return FAILURE, f"error: {message}"
    return FAILURE, (f"error: {type(err).__name__}: {message} (unexpected: rerun with `dynacomp --debug ...` "
                     "for the traceback, and report it)")
