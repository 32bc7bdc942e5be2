"""`report_to: [tensorboard]`: event files in RUN/tensorboard/ (`tensorboard --logdir RUN`)."""
from pathlib import Path

from mmtool.trackers import scalars


class TensorBoardTracker:
    run_id = None  # the event files stay in the run folder: a resumed run appends to them

    def __init__(self, out: Path, project: str, config: dict, run_id: str | None):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(out / "tensorboard"))

    def log(self, step: int, split: str, metrics: dict) -> None:
        for key, value in scalars(split, metrics).items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()
