"""Dream (Dream-org/Dream-v0-{Base,Instruct}-7B, Dream-Coder): a masked diffusion LM initialised from Qwen2.5 and
trained with "shift prediction": the logits at column ``c`` predict the token at ``c + 1`` (``shift = 1``), as in
a causal LM, though attention is bidirectional. Its own sampler re-aligns them by prepending column 0
(``cat([logits[:, :1], logits[:, :-1]])``), which :meth:`ModelFamily.logits_for` reproduces.

* **Mask token**: ``config.mask_token_id`` (151666 in the published config; ``<|mask|>`` in its tokenizer).
* **Attention mask**: the model hands ``attention_mask`` to SDPA as it is; a 2-D tokenizer mask is not
  honoured. :meth:`DreamFamily.model_inputs` builds what Dream's ``diffusion_generate`` builds: no mask when
  nothing is padded; otherwise a ``(B, 1, N, N)`` boolean mask (query and key both real) and position ids
  counted from each row's first real token (padding positions get 1).
* **Loading** (``AutoModel`` with ``trust_remote_code``): under transformers 5 the published code fails in three
  places, each adapted in memory by :meth:`DreamFamily.adapt_remote_code` (the files are never touched):
  the rotary embedding looks up a ``"default"`` entry that transformers 5's ``ROPE_INIT_FUNCTIONS`` no longer
  has (added to the modeling module's own table: standard inverse frequencies, scaling 1);
  ``DreamGenerationConfig.validate(self, is_init=False)`` refuses the keywords transformers 5 passes
  (``strict``, ``user_set_attributes``; they are dropped); ``DreamGenerationConfig.from_model_config`` (what
  ``diffusion_generate`` calls without an explicit generation config) returns a plain ``GenerationConfig``
  without Dream's fields under 5 (it builds Dream's defaults plus the model config's special token ids, which is
  what it gave under transformers 4). After loading, the rotary embeddings' ``inv_freq`` (a non-persistent buffer
  transformers 5 leaves uninitialised for remote code) is recomputed (:func:`restore_rotary_frequencies`).
* **Block cache**: Dream's attention is hard-wired SDPA, not transformers' ``AttentionInterface``, so
  Fast-dLLM's cache (:mod:`src.rollout.dllm_cache`) cannot be used.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import torch
from torch import Tensor

from src.models.families.base import ModelFamily, adapt_legacy_remote_code, remote_model_classes

log = logging.getLogger(__name__)

_GENERATION_IDS = ("mask_token_id", "pad_token_id", "bos_token_id", "eos_token_id")


def default_rope_parameters(config: Any = None, device: Any = None, seq_len: int | None = None, **rope_kwargs: Any):
    """transformers 4's ``"default"`` rotary initialiser: ``1 / theta^(2i / d)`` over the head dimension (times
    ``partial_rotary_factor``), attention scaling 1; from ``base`` / ``dim`` keywords when no config is given."""
    if config is None:
        base, dim = float(rope_kwargs["base"]), int(rope_kwargs["dim"])
    else:
        base = float(getattr(config, "rope_theta", 10000.0))
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        dim = int(head_dim * float(getattr(config, "partial_rotary_factor", 1.0)))
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float().to(device) / dim))
    return inv_freq, 1.0


def _adapt_module(module: Any) -> list[str]:
    done = []
    table = getattr(module, "ROPE_INIT_FUNCTIONS", None)
    if isinstance(table, dict) and "default" not in table:
        module.ROPE_INIT_FUNCTIONS = {**table, "default": default_rope_parameters}  # the module's own name only
        done.append("ROPE_INIT_FUNCTIONS['default']")
    gen = getattr(module, "DreamGenerationConfig", None)
    if gen is not None and not gen.__dict__.get("_post_train_adapted"):
        validate = gen.validate

        def lenient_validate(self, *args: Any, _validate=validate, **kwargs: Any):
            # Dream's validate(self, is_init=False): the keywords transformers 5 adds are dropped
            return _validate(self, **({"is_init": kwargs["is_init"]} if "is_init" in kwargs else {}))

        def from_model_config(cls, model_config: Any):
            d = model_config if isinstance(model_config, dict) else model_config.to_dict()
            return cls(**{k: d[k] for k in _GENERATION_IDS if d.get(k) is not None})

        gen.validate = lenient_validate
        gen.from_model_config = classmethod(from_model_config)
        gen._post_train_adapted = True
        done += ["DreamGenerationConfig.validate(**kwargs)", "DreamGenerationConfig.from_model_config"]
    return done


@torch.no_grad()
def restore_rotary_frequencies(model: torch.nn.Module) -> int:
    """Recompute every rotary embedding's ``inv_freq`` from its own initialiser. It is a non-persistent buffer (not
    in the checkpoint), and transformers 5 builds the model without running ``__init__``'s computation for real
    (Dream's ``_init_weights`` only knows linear and embedding layers), so after ``from_pretrained`` the buffer
    holds uninitialised memory: measured on our Dream-like fixture, every logit then differs from the model's.
    Returns how many buffers were restored."""
    n = 0
    for module in model.modules():
        init = getattr(module, "rope_init_fn", None)
        if callable(init) and isinstance(getattr(module, "inv_freq", None), Tensor):
            inv_freq, scaling = init(
                getattr(module, "config", None), module.inv_freq.device, **getattr(module, "rope_kwargs", {})
            )
            module.inv_freq.copy_(inv_freq)
            module.original_inv_freq = module.inv_freq.clone()
            module.attention_scaling = scaling
            n += 1
    return n


class DreamFamily(ModelFamily):
    name = "dream"
    shift = 1
    supports_block_cache = False

    def adapt_remote_code(self, name_or_path: str, config: Any, *, revision: str | None = None) -> Any:
        config = adapt_legacy_remote_code(name_or_path, config, revision=revision)
        if config is None:
            return None
        done: list[str] = []
        for cls in remote_model_classes(name_or_path, config, revision=revision):
            done += _adapt_module(sys.modules[cls.__module__])
        if done:
            log.info("adapted Dream's remote code of %s to transformers 5: %s", name_or_path, ", ".join(done))
        return config

    def after_load(self, model: torch.nn.Module, tokenizer: Any = None) -> None:
        restore_rotary_frequencies(model)
        if self.probe_padding(model, tokenizer):
            raise ValueError(
                f"{type(model).__name__} (model.family=dream) changes its logits under left padding even with "
                "Dream's 4-D attention mask and position ids: is it really a Dream model?"
            )

    def model_inputs(self, input_ids: Tensor, attention_mask: Tensor | None) -> dict[str, Any]:
        if attention_mask is None or bool(attention_mask.bool().all()):
            return {"input_ids": input_ids, "attention_mask": None, "use_cache": False}
        real = attention_mask.bool()
        position_ids = (real.long().cumsum(-1) - 1).masked_fill(~real, 1)
        mask = real[:, None, :, None] & real[:, None, None, :]  # (B, 1, N, N): query and key both real
        return {"input_ids": input_ids, "attention_mask": mask, "position_ids": position_ids, "use_cache": False}
