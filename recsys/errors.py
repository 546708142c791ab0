"""User-facing errors.

Everything a user can get wrong (a file, a column, a config key) raises :class:`RecsysError` with a single line
that names the place. The CLI prints that line and exits with code 2; anything else is a bug and keeps its
traceback.
"""

from typing import Optional


class RecsysError(Exception):
    """A problem with the user's input, config or environment, described in one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class DataError(RecsysError):
    """Bad data: names the file, column and (where it applies) the row."""

    def __init__(
        self,
        message: str,
        file: Optional[str] = None,
        column: Optional[str] = None,
        row: Optional[int] = None,
    ) -> None:
        where = []
        if file is not None:
            where.append(str(file))
        if column is not None:
            where.append(f"column '{column}'")
        if row is not None:
            where.append(f"row {row}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.file = file
        self.column = column
        self.row = row


class ConfigError(RecsysError):
    """Bad configuration: names the file and the key."""
