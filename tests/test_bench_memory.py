"""The benchmarks' tensor-memory reading of a profiled step (``benchmarks/opd_vs_trl.py: step_tensor_memory``),
against bytes counted by hand."""

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.opd_vs_trl import step_tensor_memory

MB = 2**20


def test_step_tensor_memory_counts_a_linear_layers_forward_and_backward():
    """Linear(512, 512) on a (256, 512) fp32 input: x and the output are 0.5 MB each, the weight's gradient 1 MB,
    the bias's 2 KB; the sum and its gradient seed 4 bytes each. The output is freed once summed (the sum's backward
    keeps only its shape), x is kept for the weight's gradient: the peak, during backward, is x + the gradients;
    after ``del``, only the gradients remain."""
    torch.manual_seed(0)
    m = torch.nn.Linear(512, 512)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as p:
        x = torch.randn(256, 512)
        y = m(x).sum()
        y.backward()
        del x, y
    got = step_tensor_memory(p)
    grads = (512 * 512 + 512) * 4 / MB
    assert abs(got["step_tensor_end_mb"] - grads) < 1e-4
    assert abs(got["step_allocated_mb"] - (0.5 + 0.5 + grads + 8 / MB)) < 1e-4
    assert abs(got["step_tensor_peak_mb"] - (0.5 + grads)) < 1e-4
