"""DiFFPO surrogate scoring cost per inner update: forwards and time for d1's one-step surrogate, the
two-stage surrogate with its two states run one after another, and the same two states batched into
one forward (the module's default). Same model, rollouts and cut, one run.

    python -m benchmarks.diffpo_scoring
"""

from __future__ import annotations

import functools


def main(num_rollouts: int = 32, gen_length: int = 32, block_length: int = 8, rounds: int = 7) -> list[dict]:
    import statistics

    import torch

    from benchmarks.common import alternating_times, spread
    from src.datamodules.prompt import PromptDataModule
    from src.datamodules.tasks.math import arithmetic_problems
    from src.losses.diffusion import cut_assignment, draw_cut
    from src.models.tiny import tiny_masked_lm
    from src.models.tokenizer import char_tokenizer
    from src.modules.diffpo.surrogate import staged_logps
    from src.rollout.diffusion_sampler import MaskedDiffusionSampler

    torch.manual_seed(0)
    tok = char_tokenizer()
    model = tiny_masked_lm(tok, hidden_size=128, num_layers=4, num_heads=4)
    dm = PromptDataModule(
        tokenizer=tok, batch_size=num_rollouts, generator=functools.partial(arithmetic_problems, num_examples=200)
    )
    dm.setup()
    b = next(iter(dm.train_dataloader()))
    ro = MaskedDiffusionSampler(
        tok, gen_length=gen_length, block_length=block_length, mode="threshold", temperature=1.0
    ).generate(model, b["prompt_ids"], b["prompt_mask"], knob=0.0)
    full = torch.ones_like(ro.decode_step)
    two = cut_assignment(
        ro.decode_step, full, draw_cut(ro.nfe, mode="uniform", generator=torch.Generator().manual_seed(0))
    )
    one = torch.zeros_like(two)
    n = ro.sequences.shape[0]

    def step(assign, max_rows):
        def f():
            model.zero_grad()
            staged_logps(model, ro, assign, mask_id=tok.mask_token_id, max_rows=max_rows).sum().backward()

        return f

    times = alternating_times({"one": step(one, None), "seq": step(two, n), "bat": step(two, None)}, rounds=rounds)
    t_seq = statistics.median(times["seq"])
    what = (
        f"DiFFPO surrogate scoring per inner update (fwd+bwd), tiny ModernBERT 128x4, {n} rollouts x {gen_length} "
        f"tokens, ms: median [range] of {rounds} alternating rounds"
    )
    row = lambda name, k, fw, base, bt: {  # noqa: E731
        "benchmark": f"  {name}",
        "baseline": base,
        "ours": f"{fw} forward(s), {spread(times[k], scale=1e3)} ms",
        "memory_ratio": float("nan"),
        "speed_ratio": bt / statistics.median(times[k]),
    }
    base = f"two-stage, 2 forwards of {n} rows: {spread(times['seq'], scale=1e3)} ms"
    return [
        {"benchmark": what, "baseline": base, "ours": "-", "memory_ratio": float("nan"), "speed_ratio": float("nan")},
        row(f"two-stage batched: 1 forward of {2 * n} rows (default)", "bat", 1, "(same baseline)", t_seq),
        row(f"d1 one-step: 1 forward of {n} rows", "one", 1, "(same baseline)", t_seq),
    ]


if __name__ == "__main__":
    for r in main():
        print(r)
