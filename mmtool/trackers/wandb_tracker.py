"""`report_to: [wandb]`: a Weights & Biases run, named after the run folder, holding the config and every record.

Where it goes is wandb's own business: `wandb login` or WANDB_API_KEY for the service, WANDB_MODE=offline for files
only (`wandb sync` uploads them later). Its local files go to RUN/wandb/ unless WANDB_DIR says otherwise."""
import os
from pathlib import Path

from mmtool.errors import MmtoolError
from mmtool.trackers import first_line, run_name, scalars


class WandbTracker:
    def __init__(self, out: Path, project: str, config: dict, run_id: str | None):
        import wandb

        # console="off": the run log's lines and bar stay in the terminal, not in wandb's copy of it.
        settings = wandb.Settings(console="off")
        try:
            self.run = wandb.init(project=project, name=run_name(out), config=config, id=run_id, resume="allow",
                                  dir=None if os.environ.get("WANDB_DIR") else str(out), settings=settings)
        except wandb.errors.Error as err:
            raise MmtoolError(f"train.report_to: wandb could not start a run ({first_line(err)}); "
                              "WANDB_MODE=offline logs to files only") from None
        self.run_id = self.run.id

    def log(self, step: int, split: str, metrics: dict) -> None:
        values = scalars(split, metrics)
        if values:
            self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()
