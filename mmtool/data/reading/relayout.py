"""Reading the rest of an epoch on another layout (ranks, loader workers, micro-batch size) than the one it began on.

An epoch's sample order is fixed by the layout that starts it: rank r's micro-batch j (0-based) is the j-th batch
its loader deals. Flattened round by round (micro-batch 0 of ranks 0..N-1, then micro-batch 1 of each, ...) the
epoch is one global sequence, and a step of global batch G consumes the next G samples of it whatever the layout.
A run resumed on another layout therefore reads on from the same global position: its round k holds the samples
k x N' x b' onward, rank n taking the n-th run of b' of them. Same layout: exactly the batches it would have read.
"""
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Layout:
    world: int  # ranks
    workers: int  # loader workers per rank (each reads its own streams); 1 where the loader has none
    batch_size: int  # micro-batch per rank


def origin_positions(origin: Layout, current: Layout, rank: int, batch: int) -> list[tuple[int, int, int]]:
    """(origin rank, origin micro-batch index, offset in it) of each sample of `rank`'s micro-batch `batch` (counted
    from the epoch's start) in the `current` layout, for an epoch that began on `origin`."""
    start = (batch * current.world + rank) * current.batch_size  # global position in the epoch's sequence
    round_size = origin.world * origin.batch_size
    return [((t % round_size) // origin.batch_size, t // round_size, t % origin.batch_size)
            for t in range(start, start + current.batch_size)]


class EpochOrigin:
    """The layout each epoch began on (a stage keeps it in its training state): the current one for an epoch
    started by this run, the saved one for the epoch a resumed run continues."""

    def __init__(self, current: Layout):
        self.current = current
        self.epoch, self.origin = None, current

    def for_epoch(self, epoch: int, skip: int) -> Layout:
        """The layout that began `epoch`, of which this rank has read `skip` micro-batches."""
        if skip == 0 or epoch != self.epoch:
            self.epoch, self.origin = epoch, self.current
        return self.origin

    def state(self) -> dict:
        return {"epoch": self.epoch, **asdict(self.origin)}

    def load_state(self, state: dict | None) -> None:
        """A state without it (saved before mmtool recorded layouts) leaves the current layout in place."""
        if state:
            self.epoch, self.origin = state["epoch"], Layout(state["world"], state["workers"], state["batch_size"])
