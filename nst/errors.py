"""User-facing errors.

An :class:`NstError` is a problem with the user's input or environment (a missing file, a bad
checksum, an impossible size). The CLI prints its message as one line on stderr and exits non-zero;
anything else is a bug and keeps its traceback.
"""


class NstError(Exception):
    """A problem the user can fix; ``str(err)`` is a complete one-line explanation."""


class WeightsError(NstError):
    """Backbone weights are missing, corrupt, or in an unexpected layout."""


class ImageError(NstError):
    """An input image cannot be read or used."""


class ConfigError(NstError):
    """A config value is invalid in a way the schema cannot express (e.g. an unknown layer)."""


class DivergedError(NstError):
    """The optimization produced a non-finite loss or image (summary.json says "diverged")."""


class RunInterrupted(NstError):
    """SIGINT/SIGTERM stopped the run after writing a checkpoint (summary.json: "interrupted");
    the command exits with 128 + ``signum`` (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, message: str, signum: int = 2):
        super().__init__(message)
        self.signum = signum


def one_line(text: object) -> str:
    """``text`` (an exception or any object) as one line: whitespace runs folded to a space; an
    exception without a message gives its type's name."""
    line = " ".join(str(text).split())
    return line or (type(text).__name__ if isinstance(text, BaseException) else line)


def first_line(text: object, limit: int | None = None) -> str:
    """The first non-empty line of ``text`` (an exception's message: JAX's and Hydra's run to
    many lines) as :func:`one_line`, cut to ``limit`` characters; an exception without a message
    gives its type's name."""
    lines = [one_line(line) for line in str(text).splitlines()]
    line = next((x for x in lines if x), "")
    if not line:
        line = type(text).__name__ if isinstance(text, BaseException) else ""
    return line if limit is None or len(line) <= limit else line[: limit - 3] + "..."
