"""`--resume` loads DeepSpeed states without unpickling arbitrary objects: states of every shipped DeepSpeed
config load weights-only, and a state file that would run code is refused in one line (issue 16, finding 6)."""
import json
from pathlib import Path

import pytest
import torch

from mmtool import safe_state
from mmtool.cpu_features import fp16_supported
from mmtool.errors import MmtoolError
from mmtool.train_state import STATE_DIR, load_latest_state, save_rotating_state
from mmtool.engine import OptimSettings, TrainEngine
from mmtool.optim import ParamGroupRule
from tests.mmtool.test_engine_state import FrozenBackboneModel
from tests.stage1_clip.test_train_e2e import LAUNCHER_VARIABLES

pytestmark = pytest.mark.faults

DEEPSPEED_CONFIGS = sorted(Path("configs/deepspeed").glob("*.json"))


class RunsCode:
    """What a crafted state file could hold: unpickling it calls Path.touch (it could as well call os.system)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def make_engine(folder: Path, seed: int, ds_config: dict | None = None) -> TrainEngine:
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ds.json").write_text(json.dumps(ds_config or {"zero_optimization": {"stage": 0}}))
    settings = OptimSettings(lr=1e-2, weight_decay=0.0, betas=(0.9, 0.98), eps=1e-6, grad_clip=1.0,
                             warmup_steps=1, total_steps=10, rules=[ParamGroupRule(pattern="^backbone\\.", lr=0.0)])
    return TrainEngine(FrozenBackboneModel(), folder / "ds.json", micro_batch_size=8, optim=settings)


def train_steps(engine: TrainEngine, batches: list[torch.Tensor]) -> list[float]:
    losses = []
    for x in batches:
        loss = engine(x.to(engine.param_dtype))  # pure-bf16 configs keep bf16 weights
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    return losses


@pytest.fixture(autouse=True)
def no_launcher(monkeypatch):
    for name in LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)  # restored afterwards: the engine sets them in-process


def trained_state(tmp_path: Path, ds_config: dict | None = None) -> list[torch.Tensor]:
    engine = make_engine(tmp_path, seed=0, ds_config=ds_config)
    batches = [torch.randn(8, 64, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    train_steps(engine, batches[:2])
    save_rotating_state(engine, tmp_path, 2, {"progress": {"step": 2}}, keep=1)
    return batches


@pytest.mark.parametrize("config", DEEPSPEED_CONFIGS, ids=lambda path: path.stem)
def test_states_of_every_deepspeed_config_load_weights_only(config, tmp_path, monkeypatch):
    ds_config = json.loads(config.read_text())
    if ds_config.get("fp16", {}).get("enabled") and not fp16_supported():
        pytest.skip("fp16 training is not supported on this CPU")
    batches = trained_state(tmp_path, ds_config)
    expected = train_steps(make_engine(tmp_path / "again", seed=0, ds_config=ds_config), batches)[2:]
    real_load, loads = torch.load, []

    def spy(path, *args, **kwargs):
        loads.append((Path(path).name, kwargs.get("weights_only")))
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    resumed = make_engine(tmp_path, seed=0, ds_config=ds_config)
    assert load_latest_state(resumed, tmp_path)["progress"] == {"step": 2}
    monkeypatch.setattr(torch, "load", real_load)
    state_files = {path.name for path in (tmp_path / STATE_DIR / "step2").glob("*.pt")}
    assert {name for name, _ in loads} == state_files and all(weights_only for _, weights_only in loads), loads
    assert train_steps(resumed, batches[2:]) == pytest.approx(expected, rel=1e-5)


def test_a_state_file_that_would_run_code_is_refused_in_one_line(tmp_path):
    trained_state(tmp_path)
    state_file = tmp_path / STATE_DIR / "step2" / "mp_rank_00_model_states.pt"
    marker = tmp_path / "code_ran"
    saved = torch.load(state_file, weights_only=True)
    torch.save({**saved, "client_state": RunsCode(marker)}, state_file)
    with pytest.raises(MmtoolError, match=r"^--resume: .*mp_rank_00_model_states.pt: refused, it holds an object "
                                          r"that loading would have to run \(Unsupported global: GLOBAL "
                                          r"getattr\); only tensors") as refused:
        load_latest_state(make_engine(tmp_path, seed=0), tmp_path)
    assert "\n" not in str(refused.value)
    assert not marker.exists()


def test_the_allow_list_holds_plain_classes_only():
    for cls in safe_state.DEEPSPEED_STATE_CLASSES:
        assert cls.__module__.startswith("deepspeed.")
        assert "__reduce__" not in vars(cls) and "__reduce_ex__" not in vars(cls) and "__setstate__" not in vars(cls)


class Crash(BaseException):
    """The process dying: not an Exception, so nothing catches it on the way out."""


def test_a_crash_while_latest_is_written_keeps_the_previous_state_loadable(tmp_path, monkeypatch):
    """Whoever writes state/latest, a crash at its worst moment (DeepSpeed's open(..., 'w') has just emptied it; an
    atomic write has not renamed yet) leaves it naming the previous complete state."""
    import builtins
    import os

    import deepspeed.runtime.engine as deepspeed_engine

    batches = trained_state(tmp_path)  # state/step2, latest = step2
    engine = make_engine(tmp_path, seed=0)
    train_steps(engine, batches[:2])
    real_open, real_replace = builtins.open, os.replace

    def open_then_crash(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if str(file).endswith("latest") and "w" in mode:
            handle.close()  # truncated, nothing written yet
            raise Crash()
        return handle

    def replace_then_crash(src, dst):
        if str(dst).endswith("latest"):
            raise Crash()
        real_replace(src, dst)

    monkeypatch.setattr(deepspeed_engine, "open", open_then_crash, raising=False)
    monkeypatch.setattr(os, "replace", replace_then_crash)
    with pytest.raises(Crash):
        save_rotating_state(engine, tmp_path, 4, {"progress": {"step": 4}}, keep=2)
    monkeypatch.undo()
    assert (tmp_path / STATE_DIR / "latest").read_text().strip() == "step2"
    assert load_latest_state(make_engine(tmp_path, seed=0), tmp_path)["progress"] == {"step": 2}


def test_fp16_loss_scalers_load_through_the_allow_list(tmp_path):
    """fp16 training does not run on this CPU, so its state is built here: the dynamic loss scaler DeepSpeed pickles
    into fp16 optimizer states loads weights-only with its attributes intact."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler

    dynamic = DynamicLossScaler(init_scale=2.0 ** 16, scale_window=1000, min_scale=1, delayed_shift=2,
                                consecutive_hysteresis=False)
    dynamic.cur_iter, dynamic.last_overflow_iter = 37, 12
    torch.save({"loss_scaler": dynamic, "static": LossScaler(128), "dynamic_loss_scale": True}, tmp_path / "s.pt")
    loaded = safe_state.load_state_file(str(tmp_path / "s.pt"))
    assert type(loaded["loss_scaler"]) is DynamicLossScaler and vars(loaded["loss_scaler"]) == vars(dynamic)
    assert loaded["static"].cur_scale == 128


def test_resume_of_a_run_killed_before_its_first_save_says_how_to_start_over(tmp_path):
    from mmtool.world_resize import latest_layout

    with pytest.raises(MmtoolError, match=r"^--resume: no saved state under .*state \(the run stopped before its "
                                          r"first state save: pass --overwrite to start it over\)$"):
        latest_layout(tmp_path / STATE_DIR)
