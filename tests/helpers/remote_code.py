"""A model folder as a hub download of a remote-code dLLM looks: ``config.json`` with ``auto_map``, the model's own
``configuration_*.py`` / ``modeling_*.py`` (/ ``generation_utils.py``), ``model.safetensors`` and a tokenizer (here
the character tokenizer).

The code is ``tests/fixtures/tiny_llada`` and ``tests/fixtures/tiny_dream`` (ours, with LLaDA's and Dream's
behaviours, see their docstrings). The weights are written with ``safetensors`` directly from a seeded instance,
not with ``save_pretrained``, so the folder does not depend on the loading path under test.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def tiny_llada_folder(out: str | Path, *, seed: int = 0) -> Path:
    return _folder(
        "tiny_llada",
        out,
        "configuration_tiny_llada.TinyLLaDAConfig",
        "modeling_tiny_llada.TinyLLaDAModelLM",
        seed=seed,
    )


def tiny_dream_folder(out: str | Path, *, seed: int = 0) -> Path:
    return _folder("tiny_dream", out, "configuration_dream.DreamConfig", "modeling_dream.DreamModel", seed=seed)


def _folder(name: str, out: str | Path, config_ref: str, model_ref: str, *, seed: int) -> Path:
    import sys

    from safetensors.torch import save_file
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    from src.models.tokenizer import char_tokenizer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for f in (FIXTURES / name).iterdir():
        if f.suffix in (".py", ".json"):
            shutil.copy(f, out / f.name)
    config_cls = get_class_from_dynamic_module(config_ref, str(out))
    model_cls = get_class_from_dynamic_module(model_ref, str(out))
    config = config_cls.from_pretrained(out)
    module = sys.modules[model_cls.__module__]
    table = getattr(module, "ROPE_INIT_FUNCTIONS", None)
    if isinstance(table, dict) and "default" not in table:  # Dream's: built here with a local stand-in entry
        module.ROPE_INIT_FUNCTIONS = {**table, "default": _default_rope}
    torch.manual_seed(seed)
    try:
        model = model_cls(config)
    finally:
        if table is not None:
            module.ROPE_INIT_FUNCTIONS = table  # the class as downloaded again (the loader under test adapts it)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        out / "model.safetensors",
        metadata={"format": "pt"},
    )
    char_tokenizer().save_pretrained(out)
    return out


def _default_rope(config, device=None, **_):
    d = config.hidden_size // config.num_attention_heads
    return 1.0 / (config.rope_theta ** (torch.arange(0, d, 2).float() / d)), 1.0


def prompt_batch(tok, prompts: list[str]):
    """Rows for ``prompts`` (dataset indices 0..n-1) and their left-padded collated batch."""
    from src.datamodules.prompt import collate_prompts

    rows = [
        {"prompt": q, "answer": "0", "prompt_ids": tok(q, add_special_tokens=False)["input_ids"], "target_ids": [1]}
        for q in prompts
    ]
    for i, r in enumerate(rows):
        r["index"] = i
    return rows, collate_prompts(rows, pad_id=tok.pad_token_id)
