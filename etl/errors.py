"""The error type the ETL raises for problems the user can fix (missing or corrupt input, a
busy output folder, a worker killed for lack of memory, a bad option).

It derives from `recbole_fork.errors.UserError`, the one base of user-caused errors, which
the command lines catch to print its one-line message; anything else is a bug and keeps its
traceback. `recbole_fork.errors` imports nothing, so this loads neither torch nor RecBole.
"""

from __future__ import annotations

from recbole_fork.errors import UserError


class EtlError(UserError):
    """A user-caused ETL failure; its message is one line naming the file and what to do."""
