"""The save / evaluate cadence the three training loops share."""
from mmtool.train_cadence import Cadence


def recorder(save_every: int, eval_every: int, val_metrics: dict | None = None):
    events = []
    cadence = Cadence(save_every, eval_every, save=lambda: events.append("save"),
                      evaluate=lambda: events.append("eval") or dict(val_metrics or {"loss": len(events)}))
    return cadence, events


def test_every_n_steps_then_once_at_the_end():
    cadence, events = recorder(save_every=2, eval_every=3)
    for step in range(1, 6):
        cadence.after_step(step)
        events.append(step)
    assert events == [1, "save", 2, "eval", 3, "save", 4, 5]
    metrics = cadence.finish(5)
    assert events[-2:] == ["eval", "save"] and metrics == {"loss": 9}


def test_epoch_ends_when_the_interval_is_zero_and_no_step_twice():
    cadence, events = recorder(save_every=0, eval_every=4)
    for step in range(1, 5):
        cadence.after_step(step)
    cadence.after_epoch(4)
    assert events == ["eval", "save"]  # step 4 was evaluated by after_step: only the save is due
    cadence.finish(4)
    assert events == ["eval", "save"]  # the last step already has both


def test_without_a_val_set_metrics_stay_empty():
    cadence = Cadence(0, 0, save=lambda: None, evaluate=lambda: {})
    cadence.after_epoch(3)
    assert cadence.finish(3) == {}
