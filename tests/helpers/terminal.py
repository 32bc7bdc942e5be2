"""A stand-in stderr that says it is a terminal, so progress bars (drawn only on a terminal) are drawn into it."""
import io


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True
