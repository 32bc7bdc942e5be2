"""What a killed run left behind, read from /proc: its children, its process group, whether a pid still lives."""
from pathlib import Path


def process_stats():
    """(pid, the fields after the command name: state, ppid, process group, ...) of every process."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        yield int(stat.parent.name), fields


def children(pid: int) -> list[int]:
    return [child for child, fields in process_stats() if int(fields[1]) == pid]


def group_members(group: int) -> list[int]:
    """Live processes (zombies count as gone) of a process group."""
    return [pid for pid, fields in process_stats() if int(fields[2]) == group and fields[0] != "Z"]


def alive(pid: int) -> bool:
    """A zombie (exited, not yet reaped by whoever inherited it) holds no memory: it counts as gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
