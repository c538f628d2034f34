"""How a sweep fails: one line naming the key or the URL, the traceback only on request.

Hydra prints a CompactHydraException as its message alone and exits 1, and re-raises it
whole with HYDRA_FULL_ERROR=1; every error that ends a sweep becomes one.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator

from hydra.errors import CompactHydraException

from mnist_sweep.masking import masked


class SweepError(CompactHydraException):
    """A sweep cannot start or go on; the message is the whole story for the user."""


def root_cause(error: BaseException) -> BaseException:
    """The innermost exception behind `error` that says something (a library's wrapper hides
    the real reason: Optuna's "invalid data in the commit" is a database that went away)."""
    chain = [error]
    while (inner := chain[-1].__cause__ or chain[-1].__context__) is not None:
        if inner in chain:
            break
        chain.append(inner)
    telling = [cause for cause in chain if str(cause).strip("() \n")]
    return telling[-1] if telling else chain[-1]


def describe(error: BaseException) -> str:
    """A one-line reason: the root cause's first line, with passwords in URLs masked."""
    cause = root_cause(error)
    if isinstance(cause, OSError) and cause.errno == errno.ENOSPC:
        where = f" writing {cause.filename}" if cause.filename else ""
        return f"no space left on the device{where}; free some and run the same command again"
    text = str(cause).strip("() \n").splitlines()
    reason = text[0] if text else type(cause).__name__
    return " ".join(masked(word) for word in reason.split(" "))


@contextlib.contextmanager
def one_line_errors(what: str) -> Iterator[None]:
    """Turn any error in the block into a SweepError: `what: <reason>`."""
    try:
        yield
    except SweepError:
        raise
    except Exception as error:
        raise SweepError(f"{what}: {describe(error)}") from error
