"""``make gpu-check`` is ready for a GPU: without one it writes a report that says every section was skipped
and exits 0; its sections' code runs here on CPU with small shapes, so a GPU session only meets what is
CUDA-specific."""

import pytest
import torch

from benchmarks import gpu_check


def test_without_cuda_the_check_skips_and_exits_zero(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "gpu.md"
    assert gpu_check.main(["--out", str(out)]) == 0
    assert "skipped: no CUDA device visible" in out.read_text()


def test_sections_run_on_cpu_and_skip_with_reasons(tmp_path):
    text, failed = gpu_check.run_all(torch.device("cpu"), quick=True, only=["fsdp2", "kernel", "sampler", "vllm"])
    assert failed == 0, text
    assert "skipped: trainer=fsdp2 needs CUDA" in text
    assert "| fused (ours) |" in text and "| plain (torch.compile) |" in text
    err = float(text.split("max |fused - plain| log-prob ")[1].split()[0])
    assert err < 1e-4  # the kernel's values, checked before it is timed
    assert "| dual |" in text


@pytest.mark.slow
def test_train_steps_section_on_cpu():
    text, failed = gpu_check.run_all(torch.device("cpu"), quick=True, only=["train_steps"])
    assert failed == 0, text
    assert "| mallowspo | 2 |" in text


@pytest.mark.slow
def test_dpo_vs_trl_section_on_cpu():
    text, failed = gpu_check.run_all(torch.device("cpu"), quick=True, only=["dpo_vs_trl"])
    assert failed == 0, text
    rate = lambda side: float(text.split(f"| {side} | ")[1].split()[0])  # noqa: E731
    assert rate("ours") > 0 and rate("TRL") > 0
    assert "ours / TRL: " in text


def test_a_failing_section_is_recorded_not_raised(monkeypatch):
    def boom(device, *, quick=False):
        raise RuntimeError("out of memory")

    monkeypatch.setitem(gpu_check.SECTIONS, "sampler", boom)
    text, failed = gpu_check.run_all(torch.device("cpu"), quick=True, only=["boom", "vllm"])
    assert failed == 1 and "FAILED: RuntimeError: out of memory" in text
