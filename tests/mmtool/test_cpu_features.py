"""The precision check asks DeepSpeed, and refuses fp16 in one line on a machine DeepSpeed says cannot run it."""
import pytest

from mmtool import cpu_features
from mmtool.engine import load_deepspeed_config
from mmtool.errors import MmtoolError


def test_fp16_support_is_deepspeeds_answer():
    from deepspeed.accelerator import get_accelerator

    assert cpu_features.fp16_supported() == bool(get_accelerator().is_fp16_supported())


def test_an_fp16_config_is_refused_where_the_accelerator_has_no_fp16(monkeypatch):
    monkeypatch.setattr(cpu_features, "fp16_supported", lambda: False)
    monkeypatch.setattr(cpu_features, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    with pytest.raises(MmtoolError, match=r"zero2_fp16\.json: fp16 is enabled but .*missing CPU features: "
                                          r"avx512_fp16, amx_fp16\); use a bf16 config") as err:
        load_deepspeed_config("configs/deepspeed/zero2_fp16.json")
    assert "\n" not in str(err.value)
    assert load_deepspeed_config("configs/deepspeed/zero2_pure_bf16.json")["bf16"]["enabled"]


def test_an_fp16_config_loads_where_the_accelerator_has_fp16(monkeypatch):
    monkeypatch.setattr(cpu_features, "fp16_supported", lambda: True)
    assert load_deepspeed_config("configs/deepspeed/zero2_fp16.json")["fp16"]["enabled"]


def test_cpu_flags_are_read_from_cpuinfo():
    flags = cpu_features.cpu_flags()
    assert not flags or "sse2" in flags  # every x86-64 CPU has sse2; an empty set means no /proc/cpuinfo


@pytest.mark.slow
def test_the_report_names_the_features_and_the_tests_they_switch():
    import subprocess
    import sys

    report = subprocess.run([sys.executable, "scripts/cpu_features.py"], capture_output=True, text=True, check=True)
    lines = report.stdout.splitlines()
    assert lines[0].startswith("CPU: ") and "avx512_fp16=" in lines[1] and "amx_bf16=" in lines[1]
    expected = "yes" if cpu_features.fp16_supported() else "no"
    assert lines[2].startswith(f"fp16 training (DeepSpeed's answer): {expected} -> ")
    assert "test_fp16_with_dynamic_loss_scaling " + ("runs" if expected == "yes" else "skips") in lines[2]
