"""Training-step throughput and peak memory: our MallowsPOModule (variant=dpo) vs TRL's DPOTrainer.

Same tiny Llama (seeded init), same tokenizer, same pairs, same batch size, CPU, fp32 on both sides
(TRL's ``DPOConfig`` defaults to ``bf16=True``; we set it off), gradient checkpointing on both
sides or off on both (TRL's default is on), measured side by side in one run: each trainer runs in
its own process so peak RSS is its own, and the runs alternate ``ours, trl, ours, trl, ...`` so
machine drift hits both; we report medians and ranges. TRL is fed our datamodule's batches in our order
(``datamodule_order``) and scores only completion positions, as it does on CUDA (``trl_completion_only``).
Throughput is optimizer steps per second over steps ``warmup..N``; peak memory is the process's peak RSS
growth over its post-import baseline.

Where our speed comes from: prefix sharing (``src.models.prefix_sharing``) runs each pair as one
``[prompt, chosen, rejected]`` row, so the prompt goes through the policy and the reference once
instead of twice (TRL's ``concatenated_forward`` runs ``2B`` rows). Same loss, fewer tokens.

    python -m benchmarks.mallowspo_vs_trl
"""

from __future__ import annotations

import functools
import statistics
import time

from benchmarks.common import case_cli, peak_rss_mb, rss_mb, run_case, spread

MODEL = {"hidden_size": 256, "num_layers": 4, "num_heads": 8}


def _pairs(n: int):
    from src.datamodules.tasks.synthetic import sorting_preferences

    return sorting_preferences(seed=0, num_examples=n, min_len=8, max_len=16)


def pairs_datamodule(tok, rows: list[dict], *, batch_size: int, max_length: int, max_prompt_length: int):
    """Our preference datamodule over fixed ``rows`` (1% held out), as every DPO benchmark feeds it."""
    from src.datamodules.preference import PreferenceDataModule

    return PreferenceDataModule(
        tokenizer=tok,
        batch_size=batch_size,
        generator=lambda seed: rows,
        val_fraction=0.01,
        max_length=max_length,
        max_prompt_length=max_prompt_length,
    )


def _datamodule(tok, batch_size: int, steps: int):
    rows = _pairs(batch_size * (steps + 2))
    return pairs_datamodule(tok, rows, batch_size=batch_size, max_length=64, max_prompt_length=32)


def datamodule_order(dm) -> list[dict[str, str]]:
    """The pairs in the order our training loop draws them (the datamodule's seeded split and shuffle, epoch
    0), so TRL can be fed exactly the same batches in the same order (it shuffles with a seed of its own
    otherwise)."""
    from src.datamodules.base import ResumableSampler

    dm.setup("fit")
    order = list(ResumableSampler(dm.train_set, num_replicas=1, rank=0, seed=dm.seed))
    return [{k: dm.train_set[i][k] for k in ("prompt", "chosen", "rejected")} for i in order]


def trl_completion_only() -> None:
    """Make TRL's LM head score only the completion positions, as it does on CUDA/XPU. TRL 1.16 decides that
    by ``trl.trainer.utils._use_triton(device)``, so on CPU it scores every position of every row (prompt
    twice, padding): a CPU artefact. This patches that selection only; kernels keep their own checks."""
    import trl.trainer.utils as trl_utils

    trl_utils._use_triton = lambda device: True


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

    from src.models.tiny import tiny_causal_lm
    from src.models.tokenizer import char_tokenizer
    from src.modules.mallowspo import MallowsPOModule

    torch.manual_seed(0)
    tok = char_tokenizer()
    base = rss_mb()
    dm = _datamodule(tok, batch_size, steps)
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


def fit_timed(
    module, datamodule, steps: int, warmup: int, *, device: str = "cpu", precision: str = "32-true"
) -> float:
    """Train ``steps`` optimizer steps with Lightning on ``device``; optimizer steps/s after ``warmup``."""
    import lightning as L

    timer = _Timer(warmup)

    class Tick(L.Callback):
        def on_train_batch_end(self, trainer, *a):
            if device == "cuda":  # a step's kernels are queued, not done, when the hook runs
                import torch

                torch.cuda.synchronize()
            timer.tick(trainer.global_step)

    tr = L.Trainer(
        max_steps=steps,
        accelerator="gpu" if device == "cuda" else "cpu",
        devices=1,
        precision=precision,
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
    device: str = "cpu",
    bf16: bool = False,
) -> float:
    """TRL ``DPOTrainer`` (sigmoid loss, beta 0.1) on ``device`` (fp32, or bf16 autocast) for ``steps``; optimizer
    steps/s after ``warmup``. ``in_order``: batches in the dataset's order (no shuffle), to match another side's
    batches exactly."""
    import tempfile

    import torch
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    timer = _Timer(warmup)

    class Tick(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if device == "cuda":
                torch.cuda.synchronize()
            timer.tick(state.global_step)

    with tempfile.TemporaryDirectory() as d:
        args = DPOConfig(
            output_dir=d,
            beta=0.1,
            loss_type=["sigmoid"],
            report_to=[],
            use_cpu=device == "cpu",
            max_steps=steps,
            per_device_train_batch_size=batch_size,
            learning_rate=lr,
            logging_steps=10_000,
            save_strategy="no",
            max_length=max_length,
            dataloader_num_workers=0,
            disable_tqdm=True,
            bf16=bf16,
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
    """TRL on our batches in our order, scoring completion positions only (its CUDA path)."""
    import torch
    from datasets import Dataset

    from src.models.tiny import tiny_causal_lm
    from src.models.tokenizer import char_tokenizer

    trl_completion_only()
    torch.manual_seed(0)
    tok = char_tokenizer()
    base = rss_mb()
    ds = Dataset.from_list(datamodule_order(_datamodule(tok, batch_size, steps)))
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
        in_order=True,
    )
    return {"steps_per_s": rate, "peak_extra_mb": peak_rss_mb() - base}


def side(runs: list[dict], digits: int = 2) -> str:
    """One side's runs: ``steps/s median [range], peak MB median``."""
    mb = statistics.median(r["peak_extra_mb"] for r in runs)
    return f"{spread([r['steps_per_s'] for r in runs], digits=digits)} steps/s, {mb:.0f} MB"


def ratio_row(label: str, base_label: str, base: list[dict], ours: list[dict], digits: int = 2) -> dict:
    """A results row: medians over the alternating runs of both sides, ranges shown."""
    med = lambda runs, k: statistics.median(r[k] for r in runs)  # noqa: E731
    return {
        "benchmark": label,
        "baseline": f"{base_label}: {side(base, digits)}",
        "ours": side(ours, digits),
        "memory_ratio": med(base, "peak_extra_mb") / max(med(ours, "peak_extra_mb"), 1e-9),
        "speed_ratio": med(ours, "steps_per_s") / med(base, "steps_per_s"),
    }


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
        ck = "grad-ckpt on (TRL default)" if grad_ckpt else "grad-ckpt off"
        head = (
            f"DPO train step, tiny Llama {MODEL}, batch {batch_size} pairs, CPU fp32, {ck}, "
            f"{steps - warmup} timed steps after {warmup}, median [range] of {repeats} alternating runs"
        )
        rows.append(ratio_row(head, "TRL DPOTrainer (completion positions, our batch order)", trl, ours))
        if concat:
            rows.append(
                {
                    **ratio_row(
                        "  ablation: MallowsPOModule(dpo, prefix_sharing=false), same setting", "", trl, concat
                    ),
                    "baseline": "(same baseline)",
                }
            )
    return rows


if __name__ == "__main__":
    case_cli({"ours": _ours, "trl": _trl}, main)
