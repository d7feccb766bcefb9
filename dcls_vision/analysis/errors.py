"""The one exception the analysis tools turn into a one-line CLI error (kept import-light for ``--help``)."""

from dcls_vision.utils.errors import UserError


class AnalysisError(UserError):
    """Bad user input for an analysis tool; the message is one line naming the value and what is allowed."""
