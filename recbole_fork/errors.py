"""The one base class of every error a user can cause (a bad file, config key, checkpoint, ...).

Command lines catch ``UserError`` alone and print its one-line message; any other exception
is a bug of the project or a library and keeps its traceback. This module imports nothing, so
the ETL (``etl.errors``) can derive from it without loading torch or RecBole.
"""


class UserError(Exception):
    """A user-caused problem; the message is one line naming the thing and what to do."""
