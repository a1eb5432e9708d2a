"""MallowsPO: DPO with a per-prompt dispersion index (Mallows-theta / Mallows-phi); DPO as a case.

Paper: Chen, Zhao, Lam, Yao, Tang, "MallowsPO: Fine-Tune Your LLM with Preference Dispersions",
ICLR 2025 (arXiv 2405.14953). Notes: ``docs/mallowspo.md``.

What we changed / simplified versus the official code (a TRL 0.9.6 fork):
* the loss lives in ``src.losses.preference`` (pure, tested); this module only scores and logs;
* entropy and log-probs are fp32 and chunked (the official code runs them in bf16, unchunked), and
  the policy's entropy is not computed (the official code builds and discards it);
* the dispersion ``w(x) = -c log Hbar(x)`` uses the frozen reference's normalised predictive
  entropy (official) or a per-example ``dispersion`` column (``dispersion.source=given``);
* the Mallows-phi variant (not in the official code) uses the exact Kendall pairwise link,
  evaluated stably in log space; ``variant=dpo`` is plain DPO;
* prefix sharing (default): one ``[prompt, chosen, rejected]`` row per pair with a custom attention
  mask, so the prompt is run once instead of twice (``src.models.prefix_sharing``; equal log-probs);
* reference log-probs and dispersions can be precomputed once and cached to disk
  (``precompute_ref=true``), after which the reference model is dropped.

Launch: ``python train.py`` (default: tiny model, sorting preferences, CPU) or
``python train.py experiment=mallowspo_bandit``;
``python train.py module.variant=mallows_phi model=smollm2 data=preference_file data.path=pairs.jsonl``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchmetrics import MeanMetric
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from src.datamodules.preference import PreferenceDataModule
from src.losses import sequence_logprob
from src.losses.preference import PREFERENCE_LOSSES, dispersion_from_entropy, preference_loss
from src.models.prefix_sharing import shared_prefix_token_stats
from src.models.scoring import next_token_logps
from src.modules.base import PostTrainModule, freeze, plain
from src.modules.mallowspo.dispersion import Dispersion
from src.rollout.hf import greedy_generate


class MallowsPOModule(PostTrainModule):
    """Preference optimisation with a dispersion index.

    Checkpoints hold the policy (and the resolved dispersion scale), not the frozen reference,
    which is rebuilt from its factory on load.

    Args:
        model: factory ``model(tokenizer) -> PreTrainedModel`` for the policy (and, by default, the
            reference: a frozen copy of the initial policy; with LoRA, the adapter-disabled base).
        tokenizer: the policy tokenizer.
        variant: ``dpo | mallows_theta | mallows_phi`` or a plug-in base ``ipo | simpo | hinge``.
        beta: inverse temperature.
        dispersion: a :class:`src.modules.mallowspo.dispersion.Dispersion` (or its ``{source, scale}`` fields):
            ``entropy`` computes ``w = -c log Hbar`` from the reference, ``given`` reads
            ``batch["dispersion"]``, ``none`` uses no index.
        length_normalization: per-token mean log-probs (SimPO / Mallows-SimPO).
        gamma, label_smoothing, reference_free: see :func:`src.losses.preference.preference_loss`.
        ref_model: optional separate factory for the reference.
        precompute_ref: score the reference once over the train/val sets and cache to ``cache_dir``.
        logprob_chunk: sequence chunk for log-softmax / entropy.
        prefix_sharing: score each pair as one ``[prompt, chosen, rejected]`` row with a custom
            attention mask (prompt computed once; equal results, fewer tokens). Needs sdpa/eager
            attention; ``false`` gives the TRL-style ``2B``-row concatenated forward.
        fused_logprobs: apply the LM head only at response positions, chunk by chunk, never
            holding ``(rows, T, V)`` logits (``src.models.scoring``); ``false``: full logits.
    """

    data_type = PreferenceDataModule

    frozen_attrs = ("ref",)

    def __init__(
        self,
        *,
        model: Callable[[PreTrainedTokenizerBase], PreTrainedModel],
        tokenizer: PreTrainedTokenizerBase,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        variant: str = "mallows_theta",
        beta: float = 0.1,
        dispersion: Dispersion | dict[str, Any],
        length_normalization: bool = False,
        gamma: float = 0.0,
        label_smoothing: float = 0.0,
        reference_free: bool = False,
        ref_model: Callable[[PreTrainedTokenizerBase], PreTrainedModel] | None = None,
        precompute_ref: bool = False,
        cache_dir: str | None = None,
        logprob_chunk: int = 128,
        prefix_sharing: bool = True,
        fused_logprobs: bool = True,
        on_non_finite: str = "skip",
        max_non_finite_fraction: float = 0.5,
        monitor: str | None = None,
    ) -> None:
        super().__init__(
            optimizer=optimizer,
            scheduler=scheduler,
            on_non_finite=on_non_finite,
            max_non_finite_fraction=max_non_finite_fraction,
            monitor=monitor,
        )
        if not isinstance(dispersion, Dispersion):
            dispersion = Dispersion(**plain(dispersion))
        disp = dispersion.as_dict()
        dispersion = disp  # a plain dict in hparams: checkpoints stay loadable with weights_only
        self.save_hyperparameters(ignore=["model", "tokenizer", "ref_model", "optimizer", "scheduler"])
        if variant not in PREFERENCE_LOSSES:
            raise ValueError(f"module.variant={variant!r}; valid: {', '.join(PREFERENCE_LOSSES)}")
        if variant.startswith("mallows") and disp["source"] == "none":
            raise ValueError(f"module.variant={variant} needs module.dispersion.source=entropy or given, not none")
        if precompute_ref and cache_dir is None:
            raise ValueError("module.precompute_ref=true needs module.cache_dir")
        self.model_factory, self.ref_factory, self.tokenizer = model, ref_model, tokenizer
        self.variant, self.beta, self.disp = variant, beta, disp
        self.policy: PreTrainedModel | None = None
        self.ref: PreTrainedModel | None = None
        self.ref_cache: dict[str, Tensor] | None = None
        self.val_acc, self.val_margin = MeanMetric(), MeanMetric()
        # resolved dispersion scale c (a buffer: saved in checkpoints, so a resume keeps it)
        self.register_buffer("disp_scale", torch.tensor(-1.0 if disp["scale"] == "auto" else float(disp["scale"])))

    # ---- models -------------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.policy is not None:
            return
        self.policy = self.model_factory(self.tokenizer).train()  # from_pretrained returns eval mode
        self.is_lora = hasattr(self.policy, "disable_adapter")
        if self.ref_factory is not None:
            self.ref = freeze(self.ref_factory(self.tokenizer))
        elif not self.is_lora and self._needs_reference():
            import copy

            self.ref = freeze(copy.deepcopy(self.policy))
        self.shard(self.policy)  # after the reference copy (which stays whole on every rank)

    def _needs_reference(self) -> bool:
        hp = self.hparams
        return not (hp.reference_free or self.variant == "simpo") or self.disp["source"] == "entropy"

    def _ref_context(self):
        return self.policy.disable_adapter() if self.ref is None and self.is_lora else nullcontext()

    def _response_stats(self, model: PreTrainedModel, batch: dict[str, Tensor], *, entropy: bool):
        """Sequence log-probs ``(2B,)`` and, optionally, per-token entropies ``(2B, T-1)``."""
        chunk, mask = self.hparams.logprob_chunk, batch["loss_mask"][:, 1:]
        fused = self.hparams.fused_logprobs
        if self.hparams.prefix_sharing:  # one [prompt, chosen, rejected] row per pair
            pad = self.tokenizer.pad_token_id
            tok, ent, vocab = shared_prefix_token_stats(
                model, batch, pad_id=pad, chunk_size=chunk, entropy=entropy, fused=fused
            )
        else:  # TRL-style concatenated forward: 2B rows [prompt, response]
            tok, ent, vocab = next_token_logps(
                model,
                batch["input_ids"],
                batch["attention_mask"],
                mask,
                entropy=entropy,
                fused=fused,
                chunk_size=chunk,
            )
        seq = sequence_logprob(tok, mask, average=self.hparams.length_normalization)
        return seq, ent, mask, vocab

    @torch.no_grad()
    def reference_stats(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Reference log-probs (chosen, rejected) and the dispersion ``w`` for a batch."""
        if self.ref_cache is not None:
            idx = batch["index"].cpu()
            return {k: v[idx].to(self.device) for k, v in self.ref_cache.items()}
        want_entropy = self.disp["source"] == "entropy"
        model = self.ref if self.ref is not None else self.policy
        with self._ref_context():
            seq, ent, mask, vocab = self._response_stats(model, batch, entropy=want_entropy)
        rc, rr = seq.chunk(2)
        out = {"ref_chosen": rc, "ref_rejected": rr}
        if want_entropy:
            ec, er = ent.chunk(2)
            mc, mr = mask.chunk(2)
            out["w"], _ = dispersion_from_entropy(ec, er, mc, mr, vocab_size=vocab, scale=1.0)
            out["w"] = out["w"] * self.disp_scale  # w is linear in c; raw -log Hbar while calibrating
        return out

    # ---- steps --------------------------------------------------------------------------------
    def _shared_step(self, batch: dict[str, Any]):
        ref = self.reference_stats(batch) if (self._needs_reference() or self.ref_cache is not None) else {}
        seq, _, _, _ = self._response_stats(self.policy, batch, entropy=False)
        pc, pr = seq.chunk(2)
        w = {"entropy": ref.get("w"), "given": batch.get("dispersion"), "none": None}[self.disp["source"]]
        if self.disp["source"] == "given" and w is None:
            raise KeyError("module.dispersion.source=given but the batch has no 'dispersion' column")
        out = preference_loss(
            pc,
            pr,
            ref.get("ref_chosen"),
            ref.get("ref_rejected"),
            loss_type=self.variant,
            beta=self.beta,
            dispersion=w,
            gamma=self.hparams.gamma,
            label_smoothing=self.hparams.label_smoothing,
            reference_free=self.hparams.reference_free,
        )
        return out

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        out = self._shared_step(batch)
        self.log_metrics("train", {"loss": out.loss.detach(), **out.metrics}, batch_size=len(batch["index"]))
        return self.skip_or_loss(out.loss)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out = self._shared_step(batch)
        n = len(batch["index"])
        self.log_metrics(
            "val",
            {"loss": out.loss, **{k: v for k, v in out.metrics.items() if k != "rewards/accuracy"}},
            batch_size=n,
        )
        # torchmetrics keep the held-out accuracy exact across batches and ranks
        self.val_acc.update(out.metrics["rewards/accuracy"], weight=n)
        self.val_margin.update(out.metrics["rewards/margin"], weight=n)
        self.log("val/rewards/accuracy", self.val_acc, on_epoch=True, on_step=False)
        self.log("val/rewards/margin_mean", self.val_margin, on_epoch=True, on_step=False)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out = self._shared_step(batch)
        self.log_metrics("test", {"loss": out.loss, **out.metrics}, batch_size=len(batch["index"]))

    # ---- reference cache ----------------------------------------------------------------------
    def _ensure_scale(self) -> None:
        if self.disp["source"] == "entropy" and float(self.disp_scale) < 0:
            self._calibrate_scale()

    def on_validation_start(self) -> None:
        self._ensure_scale()

    def on_fit_start(self) -> None:
        self._ensure_scale()
        if self.hparams.precompute_ref and self.ref_cache is None:
            self.ref_cache = self._build_ref_cache()
            self.ref = None  # the reference forward is no longer needed
            if not self.is_lora:
                import gc

                gc.collect()

    def _scored_batches(self, datasets, *, max_batches: int | None = None):
        """``(batch, reference_stats)`` over whole datasets (unsharded, in order) on this device."""
        dm = self.trainer.datamodule
        seen = 0
        for ds in datasets:
            for batch in torch.utils.data.DataLoader(ds, batch_size=dm.eval_batch_size, collate_fn=dm.collate):
                if max_batches is not None and seen >= max_batches:
                    return
                seen += 1
                batch = {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in batch.items()}
                yield batch, self.reference_stats(batch)

    @torch.no_grad()
    def _calibrate_scale(self, max_batches: int = 16) -> None:
        """``scale=auto``: ``c = 1 / mean(-log Hbar)`` over training pairs, so the mean weight is 1 and
        ``beta`` keeps its DPO meaning (how the official 0.29 was obtained; docs/mallowspo.md)."""
        self.disp_scale.fill_(1.0)
        dm = self.trainer.datamodule
        w = torch.cat([stats["w"] for _, stats in self._scored_batches([dm.train_set], max_batches=max_batches)])
        if self.trainer.world_size > 1:  # every rank must use the same c
            w = self.all_gather(w).flatten()
        self.disp_scale.fill_(1.0 / float(w.mean().clamp_min(1e-6)))

    def _cache_key(self) -> str:
        dm = self.trainer.datamodule
        ident = {
            "variant": self.variant,
            "disp": self.disp,
            "scale": float(self.disp_scale),
            "len_norm": self.hparams.length_normalization,
            "n_train": len(dm.train_set),
            "n_val": len(dm.val_set),
            "first": dm.train_set[0]["prompt_ids"][:32] + dm.train_set[0]["chosen_ids"][:32],
            "ref": str(sum(float(p.double().sum()) for p in (self.ref or self.policy).parameters())),
        }
        return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def _build_ref_cache(self) -> dict[str, Tensor]:
        dm = self.trainer.datamodule
        path = Path(self.hparams.cache_dir) / f"ref_{self._cache_key()}.pt"
        if path.exists():
            return torch.load(path)
        n = len(dm.train_set) + len(dm.val_set)
        cache: dict[str, Tensor] = {}
        for batch, stats in self._scored_batches([dm.train_set, dm.val_set]):
            for k, v in stats.items():
                cache.setdefault(k, torch.zeros(n))[batch["index"].cpu()] = v.float().cpu()
        if self.trainer.is_global_zero:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(cache, path)
        return cache

    # ---- samples ------------------------------------------------------------------------------
    def generate(self, prompts: list[str], *, max_new_tokens: int = 16) -> list[str]:
        """Greedy completions (for sample tables)."""
        return greedy_generate(self.policy, self.tokenizer, prompts, max_new_tokens=max_new_tokens)
