"""What a wandb offline run recorded: its history read back from the run's transaction log (run-ID.wandb).

The log is LevelDB's log format (32 KiB blocks of chunks with a 7-byte header) after a 7-byte ":W&B" file header;
each record is a wandb_internal.Record protobuf, the history rows among them. wandb's service process writes the
log, its last history row just before the exit record; once, on a loaded machine, a log read right after `finish()`
lacked that row, so the readers wait for the exit record (at most 30 s; a log without one is read as it stands)."""
import json
import struct
import time
from pathlib import Path

BLOCK, HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list:
    from wandb.proto.wandb_internal_pb2 import Record

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a wandb transaction log"
    found, pending, position = [], b"", HEADER
    while position + HEADER <= len(data):
        if BLOCK - position % BLOCK < HEADER:  # a block's tail too short for a chunk header is padding
            position += BLOCK - position % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + HEADER])
        if position + HEADER + length > len(data):
            break  # a chunk still being written
        chunk = data[position + HEADER:position + HEADER + length]
        position += HEADER + length
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = Record()
            record.ParseFromString(pending)
            found.append(record)
    return found


def finished_records(path: Path, timeout_s: float = 30.0) -> list:
    """records(path) once the run's exit record is in the log, or as it stands after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = records(path)
        if any(record.WhichOneof("record_type") == "exit" for record in found) or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def offline_logs(run_folder: Path) -> list[Path]:
    """The transaction logs of the offline runs under `run_folder`/wandb/, oldest first."""
    return sorted((run_folder / "wandb").glob("offline-run-*/run-*.wandb"))


def offline_history(run_folder: Path) -> dict[str, dict[int, float]]:
    """key -> step -> value of every history row of the one offline run under `run_folder`/wandb/."""
    log, = offline_logs(run_folder)
    return history(log)


def history(log: Path) -> dict[str, dict[int, float]]:
    """key -> step -> value of every history row in one transaction log."""
    found: dict[str, dict[int, float]] = {}
    for record in finished_records(log):
        if record.WhichOneof("record_type") != "history":
            continue
        step = record.history.step.num
        for item in record.history.item:
            key = item.key or "/".join(item.nested_key)
            if not key.startswith("_"):  # wandb's own _step, _runtime, _timestamp
                value = json.loads(item.value_json) if item.value_json else getattr(item, item.WhichOneof("value"))
                found.setdefault(key, {})[step] = value
    return found


def offline_config(run_folder: Path) -> dict:
    """The run's config as recorded (the last value of each key)."""
    log, = offline_logs(run_folder)
    config = {}
    for record in finished_records(log):
        kind = record.WhichOneof("record_type")
        updates = record.run.config.update if kind == "run" else record.config.update if kind == "config" else []
        for item in updates:
            config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return config
