"""The precision check asks DeepSpeed, and refuses fp16 in one line on a machine DeepSpeed says cannot run it; a
bf16 config trains in fp32 where bf16 would be emulated."""
import json
from pathlib import Path

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
    monkeypatch.setattr(cpu_features, "bf16_native", lambda: True)
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


def test_native_bf16_agrees_with_the_cpu_flags():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device answers bf16_native() by itself")
    flags = cpu_features.cpu_flags()
    if {"avx512_bf16", "amx_bf16"} & flags:
        assert cpu_features.bf16_native()
    if "avx512f" not in flags:  # no AVX-512 at all: oneDNN has no bf16 kernel to run
        assert not cpu_features.bf16_native()


@pytest.fixture
def emulated_bf16(monkeypatch):
    monkeypatch.setattr(cpu_features, "bf16_native", lambda: False)
    monkeypatch.setattr(cpu_features, "cpu_model", lambda: "AMD EPYC")
    monkeypatch.delenv(cpu_features.KEEP_SLOW_BF16, raising=False)
    monkeypatch.setattr(cpu_features, "_told", set())


@pytest.mark.parametrize("name", ["zero0_bf16", "zero3_bf16", "zero2_pure_bf16"])
def test_a_bf16_config_trains_in_fp32_where_bf16_is_emulated_and_says_so_once(emulated_bf16, capsys, name):
    path = f"configs/deepspeed/{name}.json"
    config = load_deepspeed_config(path)
    assert "torch_autocast" not in config and "bf16" not in config
    assert config["zero_optimization"] == json.loads(Path(path).read_text())["zero_optimization"]
    load_deepspeed_config(path)
    told = capsys.readouterr().err.splitlines()
    assert told == [f"note: {path} trains in fp32 here: bf16 has no oneDNN kernels on this CPU (AMD EPYC: no "
                    "AVX-512) and is emulated about 100x slower than fp32; MMTOOL_SLOW_BF16=1 keeps bf16"]


def test_bf16_stays_where_it_is_native_or_asked_for(emulated_bf16, monkeypatch, capsys):
    monkeypatch.setenv(cpu_features.KEEP_SLOW_BF16, "1")
    assert load_deepspeed_config("configs/deepspeed/zero0_bf16.json")["torch_autocast"]["dtype"] == "bfloat16"
    monkeypatch.delenv(cpu_features.KEEP_SLOW_BF16)
    monkeypatch.setattr(cpu_features, "bf16_native", lambda: True)
    assert load_deepspeed_config("configs/deepspeed/zero2_pure_bf16.json")["bf16"]["enabled"]
    assert capsys.readouterr().err == ""


def test_fp32_and_fp16_autocast_configs_are_left_alone(emulated_bf16, capsys):
    assert load_deepspeed_config("configs/deepspeed/fp32.json") == {"zero_optimization": {"stage": 0}}
    fp16_autocast = {"torch_autocast": {"enabled": True, "dtype": "float16"}}
    assert cpu_features.without_emulated_bf16(fp16_autocast, "x.json") == fp16_autocast
    assert capsys.readouterr().err == ""


def test_the_feature_caches_namespace_follows_the_precision_that_runs(emulated_bf16, monkeypatch):
    from mmtool.feature_cache import precision_of

    emulated = precision_of(load_deepspeed_config("configs/deepspeed/zero0_bf16.json"))
    monkeypatch.setattr(cpu_features, "bf16_native", lambda: True)
    native = precision_of(load_deepspeed_config("configs/deepspeed/zero0_bf16.json"))
    assert emulated == precision_of({}) != native


def test_the_llm_answers_in_fp32_where_bf16_is_emulated(emulated_bf16, monkeypatch, capsys):
    from mmtool.precision import answering_precision

    assert [answering_precision(p) for p in ("bf16", "fp32", "bf16")] == ["fp32", "fp32", "fp32"]
    assert capsys.readouterr().err.count("note: the LLM answers in fp32 here") == 1
    monkeypatch.setattr(cpu_features, "bf16_native", lambda: True)
    assert answering_precision("bf16") == "bf16"
    with pytest.raises(MmtoolError, match="--precision 'fp8'"):
        answering_precision("fp8")
