"""The GPU check, ready for the day a GPU is lent: ``make gpu-check`` (this script, then ``pytest -m gpu``).

    python benchmarks/gpu_check.py [--out benchmarks/gpu_check.md] [--device cuda] [--quick]

One report file, a section per check; every section is *skipped with its reason* when it cannot run (no
CUDA device, a package not installed) and records its error instead of stopping the others when it fails:

* **train steps**: a few bf16-mixed optimizer steps of every module (``trainer=gpu``) on the tiny models,
  seconds per step, the last training loss finite;
* **fsdp2**: ``trainer=fsdp2`` on one GPU (MallowsPO);
* **kernel**: the fused log-prob kernel (SmolLM2's head shape, trainable and frozen head) against the eager plain path,
  the ``torch.compile``d plain path, Liger's fused linear cross-entropy and Cut Cross-Entropy when installed: fwd+bwd median
  and range over alternating timed rounds after warm-up, peak memory above the inputs;
* **sampler**: masked-diffusion decoding tokens/s of a small masked LM, ``cache=none|prefix|dual``;
* **dpo_vs_trl**: the DPO training step (SmolLM2-135M architecture, HH-RLHF lengths) against TRL's
  ``DPOTrainer``, both on the GPU in bf16 autocast, the same batches in the same order;
* **vllm**: whether a vLLM rollout backend can be built (rollout throughput itself: ``make bench``).

The code is device-generic: ``tests/test_gpu_check.py`` runs every section on CPU with small shapes, so only
what is CUDA-specific (synchronisation, memory statistics, bf16 autocast on GPU) is first exercised on a GPU.
Figures go into ``benchmarks/results.md`` by hand, with the device named, once they are re-measured.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.common import spread  # noqa: E402


class Skip(Exception):
    """A section that cannot run here; its message is the reason."""


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> int:
    if device.type != "cuda":
        return 0
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def peak_above(device: torch.device, base: int) -> float | None:
    """MiB allocated at peak above ``base`` since :func:`reset_peak` (None off CUDA: not measured)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def alternate(fns: dict[str, Callable[[], Any]], *, rounds: int, warmup: int, device: torch.device) -> dict[str, list]:
    """:func:`benchmarks.common.alternating_times`, synchronising ``device`` around every timed call."""
    from benchmarks.common import alternating_times

    return alternating_times(fns, rounds=rounds, warmup=warmup, sync=lambda: sync(device))


# ---- sections ------------------------------------------------------------------------------------------
MODULES = ["mallowspo", "dpo", "opd", "sft", "diffpo", "diffpo_eb", "d1", "mdm_sft"]


def section_train_steps(device: torch.device, *, quick: bool = False) -> list[str]:
    from src.experiments import compose_run
    from src.train import run

    trainer = ["trainer=gpu"] if device.type == "cuda" else ["trainer=default", "trainer.precision=bf16-mixed"]
    steps = 2 if quick else 6
    rows = ["| module | steps | seconds / step | last train/loss |", "|---|---|---|---|"]
    for m in MODULES[:2] if quick else MODULES:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = compose_run(
                [
                    f"module={m}",
                    # the untrained tiny model: a step timing, not the default run's SFT warm-start stage
                    *(["model=tiny_masked"] if m in ("diffpo", "diffpo_eb", "d1") else []),
                    *trainer,
                    f"trainer.max_steps={steps}",
                    "trainer.val_check_interval=1000",
                    "validate_before_fit=false",
                    "export=false",
                    "callbacks.sample_table=null",
                    "optimized_metric=null",
                ],
                output_dir=tmp,
            )
            t = time.perf_counter()
            metrics, _ = run(cfg)
            dt = (time.perf_counter() - t) / steps
        loss = metrics.get("train/loss", float("nan"))
        if not math.isfinite(loss):
            raise RuntimeError(f"module={m}: train/loss is {loss}")
        rows.append(f"| {m} | {steps} | {dt:.3f} (incl. set-up) | {loss:.4f} |")
    return rows


def section_fsdp2(device: torch.device, *, quick: bool = False) -> list[str]:
    if device.type != "cuda":
        raise Skip("trainer=fsdp2 needs CUDA (trainer=fsdp2_cpu is tested on CPU)")
    from src.experiments import compose_run
    from src.train import run

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_run(
            [
                "trainer=fsdp2",
                "trainer.devices=1",
                "trainer.max_steps=4",
                "trainer.val_check_interval=1000",
                "validate_before_fit=false",
                "export=false",
                "optimized_metric=null",
            ],
            output_dir=tmp,
        )
        metrics, _ = run(cfg)
    return [f"MallowsPO, trainer=fsdp2 on 1 GPU, 4 steps: train/loss {metrics.get('train/loss', float('nan')):.4f}"]


def section_kernel(
    device: torch.device, *, quick: bool = False, N: int = 1024, H: int = 576, V: int = 49152
) -> list[str]:
    from src.losses.logprobs import fused_linear_token_stats

    if quick:
        N, H, V = 64, 32, 512
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    hidden = torch.randn(N, H, device=device, dtype=dtype, requires_grad=True)
    weight = (torch.randn(V, H, device=device) / H**0.5).to(dtype).requires_grad_(True)
    labels = torch.randint(0, V, (N,), device=device)

    def plain_fn(h, w, y):
        return torch.log_softmax((h @ w.T).float(), -1).gather(-1, y[:, None]).squeeze(-1)

    compiled = torch.compile(plain_fn, dynamic=False)

    def step(loss_fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def go() -> None:
            hidden.grad = weight.grad = None  # every variant writes fresh gradients, none accumulates
            loss_fn().backward()

        return go

    variants: dict[str, Callable[[], Any]] = {
        "plain (eager)": step(lambda: plain_fn(hidden, weight, labels).sum()),
        "plain (torch.compile)": step(lambda: compiled(hidden, weight, labels).sum()),
        "fused (ours)": step(lambda: fused_linear_token_stats(hidden, weight, labels)[0].sum()),
    }
    frozen = weight.detach()  # a head without gradient (LoRA, a reference): gradient to the hidden states only
    variants |= {
        "frozen head: plain (eager)": step(lambda: plain_fn(hidden, frozen, labels).sum()),
        "frozen head: plain (torch.compile)": step(lambda: compiled(hidden, frozen, labels).sum()),
        "frozen head: fused (ours)": step(lambda: fused_linear_token_stats(hidden, frozen, labels)[0].sum()),
    }
    if importlib.util.find_spec("liger_kernel") is not None and device.type == "cuda":
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        variants["Liger fused linear CE"] = step(lambda: liger_fused_linear_cross_entropy(hidden, weight, labels))
    if importlib.util.find_spec("cut_cross_entropy") is not None and device.type == "cuda":
        from cut_cross_entropy import linear_cross_entropy

        # its Triton kernel with its defaults (gradient filtering on: its best reasonable setting); off CUDA it
        # would run impl="torch_compile", which is the compiled plain row
        variants["Cut Cross-Entropy"] = step(lambda: linear_cross_entropy(hidden, weight, labels, reduction="sum"))
    # the same values first (a fast wrong kernel is not a result)
    ref = plain_fn(hidden, weight, labels).float()
    ours = fused_linear_token_stats(hidden, weight, labels)[0].float()
    err = float((ref - ours).abs().max())
    times = alternate(variants, rounds=3 if quick else 9, warmup=1 if quick else 3, device=device)
    mem = {}
    for name, fn in variants.items():
        base = reset_peak(device)
        fn()
        mem[name] = peak_above(device, base)
    rows = [
        f"N={N} rows, H={H}, V={V}, {str(dtype).removeprefix('torch.')}, head trainable unless named frozen, "
        f"fwd+bwd; max |fused - plain| log-prob {err:.2e}",
        "",
        "| variant | time (median [range]) | speed vs compiled plain (same head) | peak MiB above inputs |",
        "|---|---|---|---|",
    ]
    for name in variants:
        anchor = "frozen head: plain (torch.compile)" if name.startswith("frozen") else "plain (torch.compile)"
        speed = statistics.median(times[anchor]) / statistics.median(times[name])
        m = "n/a (CPU)" if mem[name] is None else f"{mem[name]:.0f}"
        rows.append(f"| {name} | {spread(times[name], scale=1e3, digits=2)} ms | {speed:.2f}x | {m} |")
    for name, pkg in (("Liger fused linear CE", "liger_kernel"), ("Cut Cross-Entropy", "cut_cross_entropy")):
        if name not in variants:
            rows.append(f"| {name} | skipped: {pkg} not installed (or no CUDA) | | |")
    return rows


def section_sampler(device: torch.device, *, quick: bool = False) -> list[str]:
    from src.models.tiny import tiny_masked_lm
    from src.models.tokenizer import char_tokenizer
    from src.rollout.diffusion_sampler import MaskedDiffusionSampler

    tok = char_tokenizer()
    hidden, layers = (32, 1) if quick else (256, 4)
    model = tiny_masked_lm(tok, hidden_size=hidden, num_layers=layers, num_heads=4 if not quick else 2).to(device)
    B, P, L = (4, 8, 16) if quick else (64, 64, 128)
    prompts = torch.randint(10, 90, (B, P), device=device)
    mask = torch.ones_like(prompts)
    rows = ["| cache | tokens/s (median of rounds) | NFE / row |", "|---|---|---|"]
    for cache in ("none", "prefix", "dual"):
        s = MaskedDiffusionSampler(tok, gen_length=L, block_length=min(32, L), mode="threshold", cache=cache)
        out = {}

        def go(s=s, out=out):
            out["ro"] = s.generate(model, prompts, mask, knob=0.9)

        ts = alternate({cache: go}, rounds=2 if quick else 5, warmup=1, device=device)[cache]
        rows.append(f"| {cache} | {B * L / statistics.median(ts):.0f} | {out['ro'].nfe.float().mean():.1f} |")
    return rows


def section_dpo_vs_trl(device: torch.device, *, quick: bool = False) -> list[str]:
    """The DPO training step against TRL's ``DPOTrainer``, both on ``device`` (bf16 autocast on CUDA, TRL's
    default), the same pairs in the same order (HH-RLHF harmless lengths, 4 pairs a step), the SmolLM2-135M
    architecture with all 30 layers; each side in its own fresh Lightning/TRL run, alternating, after warm-up
    steps. Off CUDA TRL scores every position (its CPU fallback), so the comparison is not its real path."""
    if importlib.util.find_spec("trl") is None:
        raise Skip("trl not installed (pip install trl)")
    from benchmarks import dpo_smollm2 as d

    dev = device.type
    layers, steps, warmup, rounds = (1, 3, 1, 1) if quick else (30, 12, 2, 2)
    kw = {"setting": "hh", "steps": steps, "warmup": warmup, "device": dev, "layers": layers}
    runs: dict[str, list[dict]] = {"ours": [], "TRL": []}
    for _ in range(rounds):
        runs["ours"].append(d._ours(**kw, fused=True))
        # TRL's LM head on completion positions only: its own CUDA path (forced off CUDA, where it would
        # fall back to scoring every position)
        runs["TRL"].append(d._trl(**kw, compact=True))
    med = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in runs.items()}
    cuda = dev == "cuda"  # peak RSS is per process, so off CUDA one process cannot give each side its own
    rows = [
        f"SmolLM2-135M-shaped ({layers} of 30 layers, V=49152, tied), HH-RLHF lengths, 4 pairs/step, "
        f"{'bf16 autocast' if cuda else 'fp32'}, {steps - warmup} timed steps after {warmup}, {rounds} "
        "alternating round(s); TRL scores completion positions only (its CUDA path)",
        "",
        "| side | steps/s (median [range]) | peak MiB allocated |",
        "|---|---|---|",
    ]
    for k, v in runs.items():
        m = f"{med[k]['peak_extra_mb']:.0f}" if cuda else "n/a (CPU)"
        rows.append(f"| {k} | {spread([r['steps_per_s'] for r in v], digits=3)} | {m} |")
    speed = med["ours"]["steps_per_s"] / med["TRL"]["steps_per_s"]
    memory = med["TRL"]["peak_extra_mb"] / max(med["ours"]["peak_extra_mb"], 1e-9)
    rows.append(f"\nours / TRL: {speed:.2f}x speed" + (f", {memory:.2f}x lower peak memory" if cuda else ""))
    return rows


def section_vllm(device: torch.device, *, quick: bool = False) -> list[str]:
    if importlib.util.find_spec("vllm") is None:
        raise Skip("vllm not installed (pip install vllm; module.rollout.backend=vllm)")
    if device.type != "cuda":
        raise Skip("vLLM rollouts need CUDA")
    from src.models.tokenizer import char_tokenizer
    from src.rollout.hf import make_backend

    make_backend("vllm", char_tokenizer())
    return ["vLLM backend builds; rollout throughput: make bench (rollout_throughput)"]


SECTIONS = {
    "train steps (bf16-mixed, every module)": section_train_steps,
    "trainer=fsdp2 on one GPU": section_fsdp2,
    "fused log-prob kernel vs plain, compiled plain, Liger": section_kernel,
    "masked-diffusion sampler throughput": section_sampler,
    "DPO step vs TRL DPOTrainer": section_dpo_vs_trl,
    "vLLM rollouts": section_vllm,
}


def run_all(device: torch.device, *, quick: bool = False, only: list[str] | None = None) -> tuple[str, int]:
    """The report text and the number of failed sections (skips are not failures)."""
    head = [
        "# GPU check",
        "",
        f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU (' + platform.processor() + ')'}"
        f"; torch {torch.__version__}; python {platform.python_version()}",
        "",
    ]
    failed = 0
    body = []
    for title, fn in SECTIONS.items():
        if only and fn.__name__.removeprefix("section_") not in only:
            continue
        body += [f"## {title}", ""]
        t = time.perf_counter()
        try:
            body += fn(device, quick=quick)
            body.append(f"\n({time.perf_counter() - t:.1f} s)")
        except Skip as e:
            body.append(f"skipped: {e}")
        except Exception as e:  # recorded, and the other sections still run
            failed += 1
            body.append(f"FAILED: {type(e).__name__}: {e}\n\n```\n{traceback.format_exc()[-3000:]}```")
        body.append("")
    return "\n".join(head + body), failed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="benchmarks/gpu_check.md")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="small shapes, few steps (the CPU smoke test)")
    ap.add_argument(
        "--only", default="", help="comma-separated sections: train_steps,fsdp2,kernel,sampler,dpo_vs_trl,vllm"
    )
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        text = "# GPU check\n\nskipped: no CUDA device visible (every section needs one; CPU CI runs the CPU suite)\n"
        failed = 0
    else:
        text, failed = run_all(device, quick=a.quick, only=[s for s in a.only.split(",") if s])
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text)
    print(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
