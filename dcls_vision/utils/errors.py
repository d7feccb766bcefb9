"""One base class for bad user input and one wrapper that turns it into a one-line CLI error (exit code 2).

Every error a user can fix by changing an argument, a config key or a file path subclasses :class:`UserError`; its
message is one line naming the bad value and what is allowed. Entry points run their body through :func:`run_cli`,
so the same input gives the same one line and exit code 2 whichever command reads it. Failures that are not the
user's input (a diverged loss, a preemption, a failed SLURM job, a benchmark whose data is absent) are not
UserErrors and keep their own exit codes. One of them is handled here too: a :class:`SaveError` (a full disk, a
read-only filesystem, a quota or permission error while writing a checkpoint or a results file) becomes one line
and exit code 4 (:data:`EXIT_SAVE_FAILED`), the same in train.py, eval.py and the downstream tools.

Exit codes of the entry points: 0 done, 1 a NaN/inf loss (train.py), 2 bad input (:data:`EXIT_USER_ERROR`),
3 stopped by a preemption signal after saving (train.py) / no benchmark could run (eval.py), 4 a save failed
(:data:`EXIT_SAVE_FAILED`; the previous file is intact).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

EXIT_USER_ERROR = 2  # argparse's own exit code for a bad argument
EXIT_SAVE_FAILED = 4  # a checkpoint / results file could not be written (the previous one is intact)


class UserError(ValueError):
    """Bad user input; the message is one line naming the bad value and what is allowed.

    A ValueError, so code (and tests) that caught the older ValueError-based classes still catch them.
    """


class SaveError(OSError):
    """Writing a checkpoint or results file failed; one line naming the file, the free space and the size needed,
    and what is still intact. An OSError, so code that caught the raw error still catches it."""


def error_line(err: BaseException, prog: str | None = None) -> str:
    """``prog: error: msg`` (argparse's form, for argparse tools) or ``ClassName: msg`` (Hydra entry points)."""
    message = " ".join(str(err).split("\n"))  # one line even if a message slipped a newline in
    prefix = f"{prog}: error" if prog else type(err).__name__
    return f"{prefix}: {message}"


def run_cli(main: Callable[[], T], prog: str | None = None) -> T:
    """Run ``main()``; a :class:`UserError` becomes one line on stderr and exit code 2, a :class:`SaveError` one
    line and exit code 4 (:data:`EXIT_SAVE_FAILED`); nothing else is caught.

    ``prog`` set: the line reads like the program's argparse errors (``prog: error: ...``); unset: it starts with
    the error class (``ConfigError: ...``), the form the Hydra entry points print.
    """
    try:
        return main()
    except UserError as err:
        print(error_line(err, prog), file=sys.stderr, flush=True)
        raise SystemExit(EXIT_USER_ERROR) from None
    except SaveError as err:
        print(error_line(err, prog), file=sys.stderr, flush=True)
        raise SystemExit(EXIT_SAVE_FAILED) from None


__all__ = ["EXIT_SAVE_FAILED", "EXIT_USER_ERROR", "SaveError", "UserError", "error_line", "run_cli"]
