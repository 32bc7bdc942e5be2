class MmtoolError(Exception):
    """A user-facing error: its message is one line naming the culprit."""
