"""Training-step throughput and peak memory: our MallowsPOModule (variant=dpo) vs TRL's DPOTrainer.

Same tiny Llama (seeded init), same tokenizer, same pairs, same batch size, CPU, fp32 on both sides
(TRL's ``DPOConfig`` defaults to ``bf16=True``; we set it off), gradient checkpointing on both
sides or off on both (TRL's default is on), measured side by side in one run: each trainer runs in
its own process so peak RSS is its own, and the runs alternate ``ours, trl, ours, trl, ...`` so
machine drift hits both; we report medians. Throughput is optimizer steps per second over steps
``warmup..N``; peak memory is the process's peak RSS growth over its post-import baseline.

Where our speed comes from: prefix sharing (``src.models.prefix_sharing``) runs each pair as one
``[prompt, chosen, rejected]`` row, so the prompt goes through the policy and the reference once
instead of twice (TRL's ``concatenated_forward`` runs ``2B`` rows). Same loss, fewer tokens.

    python -m benchmarks.mallowspo_vs_trl
"""

from __future__ import annotations

import functools
import statistics
import time

from benchmarks.common import case_cli, peak_rss_mb, rss_mb, run_case

MODEL = {"hidden_size": 256, "num_layers": 4, "num_heads": 8}


def _pairs(n: int):
    from src.datamodules.tasks.synthetic import sorting_preferences

    return sorting_preferences(seed=0, num_examples=n, min_len=8, max_len=16)


class _Timer:
    def __init__(self, warmup: int) -> None:
        self.warmup, self.t0, self.n = warmup, None, 0

    def tick(self, step: int) -> None:
        if step == self.warmup:
            self.t0 = time.perf_counter()
        elif step > self.warmup:
            self.n = step - self.warmup

    def rate(self) -> float:
        return self.n / (time.perf_counter() - self.t0)


def _ours(batch_size: int, steps: int, warmup: int, grad_ckpt: bool, prefix_sharing: bool = True) -> dict:
    import torch

    from src.datamodules.preference import PreferenceDataModule
    from src.models.tiny import tiny_causal_lm
    from src.models.tokenizer import char_tokenizer
    from src.modules.mallowspo import MallowsPOModule

    torch.manual_seed(0)
    tok = char_tokenizer()
    base = rss_mb()
    rows = _pairs(batch_size * (steps + 2))
    dm = PreferenceDataModule(
        tokenizer=tok,
        batch_size=batch_size,
        generator=lambda seed: rows,
        val_fraction=0.01,
        max_length=64,
        max_prompt_length=32,
    )
    m = MallowsPOModule(
        model=functools.partial(tiny_causal_lm, **MODEL, gradient_checkpointing=grad_ckpt),
        tokenizer=tok,
        variant="dpo",
        beta=0.1,
        dispersion={"source": "none", "scale": 1.0},
        prefix_sharing=prefix_sharing,
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-4),
    )
    return {"steps_per_s": fit_timed(m, dm, steps, warmup), "peak_extra_mb": peak_rss_mb() - base}


def fit_timed(module, datamodule, steps: int, warmup: int) -> float:
    """Train ``steps`` optimizer steps on CPU with Lightning; optimizer steps/s after ``warmup``."""
    import lightning as L

    timer = _Timer(warmup)

    class Tick(L.Callback):
        def on_train_batch_end(self, trainer, *a):
            timer.tick(trainer.global_step)

    tr = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Tick()],
    )
    tr.fit(module, datamodule)
    return timer.rate()


def trl_timed(
    policy,
    ref,
    dataset,
    tok,
    *,
    batch_size: int,
    steps: int,
    warmup: int,
    max_length: int,
    lr: float,
    grad_ckpt: bool,
    in_order: bool = False,
) -> float:
    """TRL ``DPOTrainer`` (sigmoid loss, beta 0.1, CPU, fp32) for ``steps``; optimizer steps/s after ``warmup``.
    ``in_order``: batches in the dataset's order (no shuffle), to match another side's batches exactly."""
    import tempfile

    import torch
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    timer = _Timer(warmup)

    class Tick(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            timer.tick(state.global_step)

    with tempfile.TemporaryDirectory() as d:
        args = DPOConfig(
            output_dir=d,
            beta=0.1,
            loss_type=["sigmoid"],
            report_to=[],
            use_cpu=True,
            max_steps=steps,
            per_device_train_batch_size=batch_size,
            learning_rate=lr,
            logging_steps=10_000,
            save_strategy="no",
            max_length=max_length,
            dataloader_num_workers=0,
            disable_tqdm=True,
            bf16=False,
            gradient_checkpointing=grad_ckpt,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
        cls = DPOTrainer
        if in_order:

            class cls(DPOTrainer):  # noqa: N801
                def _get_train_sampler(self, *a, **k):
                    return torch.utils.data.SequentialSampler(self.train_dataset)

        cls(
            model=policy, ref_model=ref, args=args, train_dataset=dataset, processing_class=tok, callbacks=[Tick()]
        ).train()
    return timer.rate()


def _trl(batch_size: int, steps: int, warmup: int, grad_ckpt: bool) -> dict:
    import torch
    from datasets import Dataset

    from src.models.tiny import tiny_causal_lm
    from src.models.tokenizer import char_tokenizer

    torch.manual_seed(0)
    tok = char_tokenizer()
    base = rss_mb()
    ds = Dataset.from_list(_pairs(batch_size * (steps + 2)))
    policy = tiny_causal_lm(tok, **MODEL)
    ref = tiny_causal_lm(tok, **MODEL)
    rate = trl_timed(
        policy,
        ref,
        ds,
        tok,
        batch_size=batch_size,
        steps=steps,
        warmup=warmup,
        max_length=64,
        lr=1e-4,
        grad_ckpt=grad_ckpt,
    )
    return {"steps_per_s": rate, "peak_extra_mb": peak_rss_mb() - base}


def _median(runs: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def main(batch_size: int = 16, steps: int = 40, warmup: int = 5, repeats: int = 3) -> list[dict]:
    rows = []
    for grad_ckpt in (True, False):
        kw = {"batch_size": batch_size, "steps": steps, "warmup": warmup, "grad_ckpt": grad_ckpt}
        ours, trl, concat = [], [], []
        for _ in range(repeats):  # interleaved, so drift in machine speed hits both sides alike
            ours.append(run_case("mallowspo_vs_trl", "ours", **kw))
            trl.append(run_case("mallowspo_vs_trl", "trl", **kw))
            if grad_ckpt:  # ablation: our module with TRL's 2B-row layout
                concat.append(run_case("mallowspo_vs_trl", "ours", **kw, prefix_sharing=False))
        o, t = _median(ours), _median(trl)
        ck = "grad-ckpt on (TRL default)" if grad_ckpt else "grad-ckpt off"
        rows.append(
            {
                "benchmark": f"DPO train step, tiny Llama {MODEL}, batch {batch_size} pairs, CPU fp32, {ck}, median of {repeats}",
                "baseline": f"TRL DPOTrainer: {t['steps_per_s']:.2f} steps/s, {t['peak_extra_mb']:.0f} MB",
                "ours": f"MallowsPOModule(dpo): {o['steps_per_s']:.2f} steps/s, {o['peak_extra_mb']:.0f} MB",
                "memory_ratio": t["peak_extra_mb"] / max(o["peak_extra_mb"], 1e-9),
                "speed_ratio": o["steps_per_s"] / t["steps_per_s"],
            }
        )
        if concat:
            c = _median(concat)
            rows.append(
                {
                    "benchmark": "  ablation: MallowsPOModule(dpo, prefix_sharing=false), same setting",
                    "baseline": "(same baseline)",
                    "ours": f"{c['steps_per_s']:.2f} steps/s, {c['peak_extra_mb']:.0f} MB",
                    "memory_ratio": t["peak_extra_mb"] / max(c["peak_extra_mb"], 1e-9),
                    "speed_ratio": c["steps_per_s"] / t["steps_per_s"],
                }
            )
    return rows


if __name__ == "__main__":
    case_cli({"ours": _ours, "trl": _trl}, main)
