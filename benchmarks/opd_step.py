"""OPD+ vs OPD training-step time on the same batch (target: ratio <= 1.05), and rollout tokens/s.

The two estimators differ only in the per-token advantage (``f'(r_t) - f'(1)`` instead of
``h(r_t)``), so OPD+ should be nearly free. Timed on the same prompts, same seeds, same tiny
student/teacher, CPU; the rollout (HF ``generate`` with KV cache) is timed separately.

    python -m benchmarks.opd_step
"""

from __future__ import annotations

import functools
import statistics


def main(batch_prompts: int = 16, n: int = 4, max_new_tokens: int = 16, repeats: int = 10) -> list[dict]:
    import torch

    from benchmarks.common import alternating_times, spread
    from src.datamodules.prompt import PromptDataModule
    from src.datamodules.tasks.math import arithmetic_problems
    from src.models.tiny import tiny_causal_lm
    from src.models.tokenizer import char_tokenizer
    from src.modules.opd import OPDModule
    from src.rollout.hf import completion_logps

    tok = char_tokenizer()
    model = functools.partial(tiny_causal_lm, hidden_size=128, num_layers=4, num_heads=4)
    dm = PromptDataModule(
        tokenizer=tok,
        batch_size=batch_prompts,
        generator=functools.partial(arithmetic_problems, num_examples=200, max_operand=19),
    )
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    mods = {}
    for est in ("opd", "opd_plus"):
        m = OPDModule(
            model=model,
            teacher=functools.partial(model, seed=3),
            tokenizer=tok,
            estimator=est,
            divergence="js",
            optimizer=functools.partial(torch.optim.AdamW, lr=1e-4),
            rollout={"backend": "hf", "n": n, "max_new_tokens": max_new_tokens, "temperature": 1.0, "top_p": 1.0},
            eval={"k": 1, "n": 1, "temperature": 1.0, "max_new_tokens": max_new_tokens},
        )
        m.configure_model()
        m.log_metrics = lambda *a, **k: None  # no trainer attached: skip logging
        mods[est] = m
    # one fixed rollout (seed 0), so both estimators see identical tokens; generated once untimed (warm-up),
    # then timed over 5 runs with the same seed (the same tokens each time)
    out = {}

    def gen():
        torch.manual_seed(0)
        out["ro"] = mods["opd"].backend.generate(
            mods["opd"].policy, batch["prompt_ids"], batch["prompt_mask"], n=n, max_new_tokens=max_new_tokens
        )

    gen_s = alternating_times({"gen": gen}, rounds=5, warmup=1)["gen"]
    ro = out["ro"]
    gen_tokens = int(ro.action_mask.sum())
    from src.losses import opd_loss

    with torch.no_grad():
        t_lp = completion_logps(mods["opd"].teacher, ro)

    def step(est, m):
        def go():
            s_lp = completion_logps(m.policy, ro)
            opd_loss(s_lp, t_lp, ro.action_mask, estimator=est, divergence="js").loss.backward()
            m.policy.zero_grad(set_to_none=True)

        return go

    # alternating round by round after a warm-up round, so drift affects both equally
    times = alternating_times({est: step(est, m) for est, m in mods.items()}, rounds=repeats, warmup=1)
    med = {k: statistics.median(v) for k, v in times.items()}
    return [
        {
            "benchmark": f"OPD+ vs OPD loss step (student fwd+bwd + estimator), {batch_prompts}x{n} rollouts, JS, "
            f"ms: median [range] of {repeats} alternating rounds",
            "baseline": f"OPD {spread(times['opd'], scale=1e3, digits=1)} ms",
            "ours": f"OPD+ {spread(times['opd_plus'], scale=1e3, digits=1)} ms",
            "memory_ratio": float("nan"),
            "speed_ratio": med["opd"] / med["opd_plus"],
        },
        {
            "benchmark": f"rollout: HF generate + KV cache, tiny Llama 128x4, {batch_prompts * n} samples x {max_new_tokens} "
            "new, median [range] of 5 runs",
            "baseline": "-",
            "ours": f"{spread([gen_tokens / t for t in gen_s])} completion tokens/s ({spread(gen_s, digits=2)} s)",
            "memory_ratio": float("nan"),
            "speed_ratio": float("nan"),
        },
    ]


if __name__ == "__main__":
    for r in main():
        print(r)
