"""Monte-Carlo gradient variance of OPD vs OPD+ on the arithmetic task (real sampled rollouts).

    .venv/bin/python scripts/opd_mc_variance.py [--samples 256] [--seed 0]

The counterpart of ``scripts/opd_variance.py`` (exact enumeration on 3-token toys) on the SFT'd
teacher and student of the README's arithmetic table (``experiment=opd_arith_teacher`` /
``opd_arith_student``, built and cached by ``scripts/opd_table.py`` if missing). Held-out is not
needed: no training happens. ``--samples`` completions (one per prompt, training prompts) are
drawn from the student once; every estimator is scored on the *same* samples, so the comparison
is paired. For each divergence and estimator (the paper's: discount 0, uncentred; OPD+ also
centred) it reports, over the per-sample gradients ``g_i = grad sum_t A_t log pi_t`` of the
student's parameters:

* ``tr Cov(g)`` (the one-sample gradient variance) and ``|mean g|^2``;
* their ratio (noise-to-signal: how many samples a batch needs before the mean dominates);
* the variance of the per-token advantages.

It does not say which estimator is *right*: OPD is biased except for reverse KL (exact
enumeration); this measures only how noisy each one is on a real model.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402

import src.utils.resolvers  # noqa: E402,F401
from src.experiments import build_job  # noqa: E402
from src.losses.distillation import distillation_advantages  # noqa: E402

CONFIGS = [("opd", False), ("opd_plus", False), ("opd_plus", True)]


def _module(overrides: list[str]):
    objs = build_job(["experiment=opd_arith", *overrides])
    m, dm = objs["module"], objs["datamodule"]
    m.configure_model()
    dm.setup()
    return m, dm


def stats(samples: int, seed: int, divergences: list[str], overrides: tuple[str, ...] = ()) -> list[dict]:
    torch.manual_seed(seed)
    m, dm = _module([f"seed={seed}", "module.rollout.n=1", f"data.global_batch_size={samples}", *overrides])
    batch = next(
        iter(torch.utils.data.DataLoader(dm.train_set, batch_size=samples, shuffle=True, collate_fn=dm.collate))
    )
    ro, _, t_lp = m._rollout_and_score(batch)
    params = [p for p in m.policy.parameters() if p.requires_grad]
    rows = {}
    per_sample: dict[tuple, list[torch.Tensor]] = {}
    adv_vars: dict[tuple, torch.Tensor] = {}
    with torch.no_grad():
        s_all = m._logps(m.policy, ro)
    mask = ro.action_mask
    for div in divergences:
        for est, center in CONFIGS:
            a, _ = distillation_advantages(s_all, t_lp, mask, estimator=est, divergence=div, center=center)
            adv_vars[div, est, center] = a[mask.bool()].var()
            per_sample[div, est, center] = []
    for i in range(samples):  # one forward per sample, one backward per (divergence, estimator)
        sub = type(ro)(
            sequences=ro.sequences[i : i + 1],
            attention_mask=ro.attention_mask[i : i + 1],
            prompt_len=ro.prompt_len,
            action_mask=mask[i : i + 1],
            texts=ro.texts[i : i + 1],
        )
        s_lp = m._logps(m.policy, sub)
        for div in divergences:
            for est, center in CONFIGS:
                a, _ = distillation_advantages(
                    s_lp.detach(), t_lp[i : i + 1], mask[i : i + 1], estimator=est, divergence=div, center=center
                )
                g = torch.autograd.grad((a * s_lp).sum(), params, retain_graph=True)
                per_sample[div, est, center].append(torch.cat([x.flatten() for x in g]))
    for key, gs in per_sample.items():
        G = torch.stack(gs).double()
        mean = G.mean(0)
        var = (G - mean).pow(2).sum(1).mean() * samples / (samples - 1)
        rows[key] = {"trace_cov": float(var), "mean_sq": float(mean.pow(2).sum()), "adv_var": float(adv_vars[key])}
    return [{"divergence": k[0], "estimator": k[1], "center": k[2], **v} for k, v in rows.items()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--divergences", default="reverse_kl,forward_kl,js")
    a = ap.parse_args()
    import statistics

    runs = [stats(a.samples, s, a.divergences.split(",")) for s in a.seeds]
    print(f"\n{a.samples} student samples per seed, seeds {a.seeds}; mean ± std over seeds")
    print("| divergence | estimator | tr Cov(g) | mean g squared | noise / signal | advantage variance |")
    print("|---|---|---|---|---|---|")
    for j, r0 in enumerate(runs[0]):
        cells = [[run[j][k] for run in runs] for k in ("trace_cov", "mean_sq", "adv_var")]
        ratio = [run[j]["trace_cov"] / run[j]["mean_sq"] for run in runs]

        def ms(x):
            return f"{statistics.mean(x):.3g} ± {statistics.stdev(x):.2g}" if len(x) > 1 else f"{x[0]:.3g}"

        name = {("opd", False): "OPD", ("opd_plus", False): "OPD+ (paper)", ("opd_plus", True): "OPD+ centred"}
        print(
            f"| {r0['divergence']} | {name[r0['estimator'], r0['center']]} | {ms(cells[0])} | {ms(cells[1])} "
            f"| {ms(ratio)} | {ms(cells[2])} |"
        )


if __name__ == "__main__":
    main()
