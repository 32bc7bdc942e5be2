"""UTF-8 text files read with one-line errors: a byte that is not UTF-8 is named with its file, line or offset."""
from pathlib import Path
from typing import Iterator

from mmtool.errors import MmtoolError


def read_utf8(path: Path) -> str:
    return utf8_text(Path(path).read_bytes(), str(path))


def utf8_text(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise MmtoolError(f"{where}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start})") from None


def utf8_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number from 1, text) per line; a line that is not UTF-8 raises naming file:line and column."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise MmtoolError(f"{path}:{number}: not UTF-8 text (byte 0x{raw[err.start]:02x} at column "
                                  f"{err.start + 1})") from None


def bad_utf8_reason(raw: bytes) -> str | None:
    """'not UTF-8 text (byte 0x.. at column N)' for a line that is not UTF-8, else None."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return f"not UTF-8 text (byte 0x{raw[err.start]:02x} at column {err.start + 1})"
    return None
