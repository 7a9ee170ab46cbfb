"""Errors a user can act on. The CLI prints their message (no traceback) and exits with status 2."""


class AlignloopError(Exception):
    """Base of every error whose message tells the user what to fix."""


class DataError(AlignloopError, ValueError):
    """Bad input data. The message names the file, the line (1-based) and the field."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None, field: str | None = None):
        self.path, self.line, self.field = path, line, field
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        what = f"field '{field}': " if field else ""
        super().__init__(f"{where}{what}{message}")


class ModelError(AlignloopError):
    """A model that cannot be found or loaded; the message says what to do."""


class TrainingError(AlignloopError):
    """A run that had to stop (e.g. a NaN loss); the message says what was kept."""
