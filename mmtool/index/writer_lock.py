"""One writer per index: `index build` and `index add` hold an exclusive lock on INDEX/.lock while they write.
The kernel drops the lock when its holder dies, so a killed writer never leaves a stale one."""
import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from mmtool.errors import MmtoolError

LOCK_NAME = ".lock"


@contextmanager
def exclusive_writer(folder: Path) -> Iterator[None]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_NAME, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise MmtoolError(f"{folder}: another mmtool index build/add (pid {holder}) is writing this index; "
                              f"wait for it to finish") from None
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
