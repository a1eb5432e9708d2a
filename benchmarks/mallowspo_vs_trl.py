"""Training-step throughput and peak memory: our MallowsPOModule (variant=dpo) vs TRL's DPOTrainer.

Same tiny Llama (seeded init), same tokenizer, same pairs, same batch size, CPU, fp32, measured
side by side in one run (each trainer in its own process so peak RSS is its own). Throughput is
optimizer steps per second over steps 5..N (warm-up excluded).

    python -m benchmarks.mallowspo_vs_trl
"""

from __future__ import annotations

import functools
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


def _ours(batch_size: int, steps: int, warmup: int) -> dict:
    import lightning as L
    import torch

    from src.datamodules.preference import PreferenceDataModule
    from src.models.tiny import tiny_causal_lm
    from src.models.tokenizer import char_tokenizer
    from src.modules.mallowspo import MallowsPOModule

    torch.manual_seed(0)
    tok = char_tokenizer()
    base = rss_mb()
    rows = _pairs(batch_size * (steps + 2))
    dm = PreferenceDataModule(tokenizer=tok, batch_size=batch_size, generator=lambda seed: rows, val_fraction=0.01,
                              max_length=64, max_prompt_length=32)  # fmt: skip
    m = MallowsPOModule(model=functools.partial(tiny_causal_lm, **MODEL), tokenizer=tok, variant="dpo", beta=0.1,
                        dispersion={"source": "none"}, optimizer=functools.partial(torch.optim.AdamW, lr=1e-4))  # fmt: skip
    timer = _Timer(warmup)

    class Tick(L.Callback):
        def on_train_batch_end(self, trainer, *a):
            timer.tick(trainer.global_step)

    tr = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False, limit_val_batches=0,
                   enable_progress_bar=False, enable_model_summary=False, callbacks=[Tick()])  # fmt: skip
    tr.fit(m, dm)
    return {"steps_per_s": timer.rate(), "peak_extra_mb": peak_rss_mb() - base}


def _trl(batch_size: int, steps: int, warmup: int) -> dict:
    import tempfile

    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from src.models.tiny import tiny_causal_lm
    from src.models.tokenizer import char_tokenizer

    torch.manual_seed(0)
    tok = char_tokenizer()
    base = rss_mb()
    ds = Dataset.from_list(_pairs(batch_size * (steps + 2)))
    policy = tiny_causal_lm(tok, **MODEL)
    ref = tiny_causal_lm(tok, **MODEL)
    timer = _Timer(warmup)

    class Tick(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            timer.tick(state.global_step)

    with tempfile.TemporaryDirectory() as d:
        args = DPOConfig(output_dir=d, beta=0.1, loss_type=["sigmoid"], report_to=[], use_cpu=True, max_steps=steps,
                         per_device_train_batch_size=batch_size, learning_rate=1e-4, logging_steps=10_000,
                         save_strategy="no", max_length=64, dataloader_num_workers=0, disable_tqdm=True)  # fmt: skip
        tr = DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=ds, processing_class=tok, callbacks=[Tick()])
        tr.train()
    return {"steps_per_s": timer.rate(), "peak_extra_mb": peak_rss_mb() - base}


def main(batch_size: int = 16, steps: int = 40, warmup: int = 5) -> list[dict]:
    kw = {"batch_size": batch_size, "steps": steps, "warmup": warmup}
    ours, trl = run_case("mallowspo_vs_trl", "ours", **kw), run_case("mallowspo_vs_trl", "trl", **kw)
    return [{
        "benchmark": f"DPO train step, tiny Llama {MODEL}, batch {batch_size} pairs, CPU fp32",
        "baseline": f"TRL DPOTrainer: {trl['steps_per_s']:.2f} steps/s, {trl['peak_extra_mb']:.0f} MB",
        "ours": f"MallowsPOModule(dpo): {ours['steps_per_s']:.2f} steps/s, {ours['peak_extra_mb']:.0f} MB",
        "memory_ratio": trl["peak_extra_mb"] / max(ours["peak_extra_mb"], 1e-9),
        "speed_ratio": ours["steps_per_s"] / trl["steps_per_s"],
    }]  # fmt: skip


if __name__ == "__main__":
    case_cli({"ours": _ours, "trl": _trl}, main)
