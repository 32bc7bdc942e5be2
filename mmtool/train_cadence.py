"""A training loop's schedule: how many optimizer steps an epoch holds, and when the loop saves its state and
evaluates. The bookkeeping all three stages share."""
from mmtool.errors import MmtoolError


def steps_per_epoch(samples: int, batch_size: int, accum_steps: int, world: int) -> int:
    """Optimizer steps in one pass over `samples`; accum_steps is checked before it divides anything."""
    if accum_steps < 1:
        raise MmtoolError(f"train.accum_steps must be >= 1, got {accum_steps}")
    steps = samples // (batch_size * accum_steps * world)
    if steps == 0:
        raise MmtoolError(f"data.batch_size {batch_size} x train.accum_steps {accum_steps} x {world} ranks "
                          f"exceeds the {samples} training samples")
    return steps


class Cadence:
    """Saves / evaluates every `save_every` / `eval_every` optimizer steps, or at each epoch's end when that is 0,
    and once more when the run ends; a step is never saved or evaluated twice. `metrics` is the latest evaluation.

    `save()` and `evaluate() -> dict` are the stage's own actions (evaluate returns {} when there is no val set)."""

    def __init__(self, save_every: int, eval_every: int, save, evaluate):
        self.save_every, self.eval_every = save_every, eval_every
        self._save, self._evaluate = save, evaluate
        self.saved_at = self.evaluated_at = None
        self.metrics: dict = {}

    def save(self, step: int) -> None:
        if self.saved_at != step:
            self._save()
            self.saved_at = step

    def evaluate(self, step: int) -> dict:
        if self.evaluated_at != step:
            self.metrics = self._evaluate()
            self.evaluated_at = step
        return self.metrics

    def after_step(self, step: int) -> None:
        if self.save_every and step % self.save_every == 0:
            self.save(step)
        if self.eval_every and step % self.eval_every == 0:
            self.evaluate(step)

    def after_epoch(self, step: int) -> None:
        if not self.save_every:
            self.save(step)
        if not self.eval_every:
            self.evaluate(step)

    def finish(self, step: int) -> dict:
        """The final evaluation and state (skipped when this step already has them); returns the metrics."""
        self.evaluate(step)
        self.save(step)
        return self.metrics
