"""Exact evaluation of the MallowsPO synthetic bandit (see ``tasks.synthetic.mallows_bandit``).

For each context the policy's distribution over arms is read off the first response token
(renormalised over the arm tokens) and compared with the ground truth: arm ``k`` has true reward
``num_arms - 1 - k``. Logged per dispersion level, so the claim "dispersion-aware losses
spend less of the KL budget on noisy (high-phi) contexts" can be checked directly:

* ``val/bandit/true_reward``: mean over contexts of ``E_pi[r]``;
* ``val/bandit/top1``: fraction of contexts whose most likely arm is the true best;
* ``val/bandit/kl_ref``: mean ``KL(pi || ref)`` over contexts (the regularisation spent);
* the same three with a ``_phi{phi}`` suffix per dispersion level.
"""

from __future__ import annotations

from collections import defaultdict

import lightning as L
import torch


class BanditEval(L.Callback):
    def __init__(
        self,
        num_contexts: int = 8,
        num_arms: int = 5,
        phis: tuple[float, ...] = (0.1, 0.9),
        arm_names: str = "abcdefghij",
    ) -> None:
        self.num_contexts, self.num_arms, self.phis, self.arm_names = num_contexts, num_arms, tuple(phis), arm_names

    @torch.no_grad()
    def arm_logprobs(self, model, tokenizer, device) -> torch.Tensor:
        """``(num_contexts, num_arms)`` log-probs over arms, renormalised over the arm tokens."""
        arm_ids = [tokenizer(a, add_special_tokens=False)["input_ids"][0] for a in self.arm_names[: self.num_arms]]
        out = []
        for c in range(self.num_contexts):
            ids = tokenizer(f"context {c}:", add_special_tokens=False)["input_ids"]
            if tokenizer.bos_token_id is not None:
                ids = [tokenizer.bos_token_id, *ids]
            x = torch.tensor([ids], device=device)
            logits = model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0, -1].float()
            out.append(torch.log_softmax(logits[arm_ids], -1))
        return torch.stack(out)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        tok = pl_module.tokenizer
        logp = self.arm_logprobs(pl_module.policy, tok, pl_module.device)
        ref_model = pl_module.ref if pl_module.ref is not None else pl_module.policy
        ref = self.arm_logprobs(ref_model, tok, pl_module.device)
        reward = torch.arange(self.num_arms - 1, -1, -1, dtype=torch.float32, device=logp.device)
        p = logp.exp()
        true_r = (p * reward).sum(-1)
        top1 = (logp.argmax(-1) == 0).float()
        kl = (p * (logp - ref)).sum(-1)
        groups: dict[str, list[int]] = defaultdict(list)
        for c in range(self.num_contexts):
            groups[f"_phi{self.phis[c % len(self.phis)]}"].append(c)
        metrics = {
            "val/bandit/true_reward": true_r.mean(),
            "val/bandit/top1": top1.mean(),
            "val/bandit/kl_ref": kl.mean(),
        }
        for suffix, idx in groups.items():
            i = torch.tensor(idx, device=logp.device)
            metrics[f"val/bandit/true_reward{suffix}"] = true_r[i].mean()
            metrics[f"val/bandit/top1{suffix}"] = top1[i].mean()
            metrics[f"val/bandit/kl_ref{suffix}"] = kl[i].mean()
        # exact, computed from the (rank-identical) weights: the cross-rank mean is the same value
        pl_module.log_dict(metrics, on_epoch=True, sync_dist=True)
