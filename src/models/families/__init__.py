"""Model families: what a kind of model is, defined once.

A family says how its models are loaded (remote code and this transformers version's compat step), which token
is the mask, whether the model honours ``attention_mask``, and which logits predict which tokens. Everything
that runs a model (the diffusion sampler, the surrogate and d1's scoring, masked-diffusion SFT, the block
cache, the fused log-probs) asks the family of the model in hand (:func:`family_of`) instead of keeping its
own copy.

========  ===========================  ======================  =====================================
family    logits at column c predict   mask token              attention_mask
========  ===========================  ======================  =====================================
causal    token c + 1                  none (not a diffusion)  honoured (2-D)
llada     token c (in place)           config / tokenizer      LLaDA's code ignores it (probed at
                                       (LLaDA: 126336)         load; padding-free groups then)
dream     token c + 1 (AR-initialised  config (151666)         a 2-D mask is not honoured: the family
          "shift prediction")                                  builds Dream's 4-D mask + positions
========  ===========================  ======================  =====================================

``llada`` also covers in-place masked LMs such as BERT and ModernBERT (the tiny models of the tests).

Where each family-specific fact lives (nothing outside this package branches on a model kind):

* the mask token: :meth:`ModelFamily.mask_token_id` (LLaDA's default in ``llada.py``);
* the logit shift: :attr:`ModelFamily.shift` and the one rule that applies it, :meth:`ModelFamily.logits_for`
  (next-token scoring checks it: :func:`src.models.scoring.check_next_token_family`);
* the attention-mask quirks: :meth:`ModelFamily.model_inputs` (Dream's 4-D mask and positions) and
  :meth:`ModelFamily.ignores_attention_mask` with ``padding.py`` (LLaDA's padding-free groups);
* loading and compat: :meth:`ModelFamily.adapt_remote_code` / :meth:`ModelFamily.after_load` (``base.py``:
  transformers-4 remote code; ``dream.py``: Dream's), called by ``src.models.hf.load_masked_lm``.
"""

from src.models.families.base import (
    FAMILIES,
    Forward,
    ModelFamily,
    detect_family,
    family_of,
    get_family,
    mask_token_id,
)

__all__ = ["FAMILIES", "Forward", "ModelFamily", "detect_family", "family_of", "get_family", "mask_token_id"]
