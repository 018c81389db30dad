"""The one error type the ETL raises for problems the user can fix (missing or corrupt input)."""

from __future__ import annotations


class EtlError(RuntimeError):
    """A user-caused ETL failure; its message is one line naming the file and what to do."""
