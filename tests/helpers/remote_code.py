"""A model folder as a hub download of a remote-code dLLM looks: ``config.json`` with ``auto_map``, the model's own
``configuration_*.py`` / ``modeling_*.py``, ``model.safetensors`` and a tokenizer (here the character tokenizer).

The code is ``tests/fixtures/tiny_llada`` (ours, with LLaDA's behaviours, see its docstring). The weights are
written with ``safetensors`` directly from a seeded instance, not with ``save_pretrained``, so the folder does not
depend on the loading path under test.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_llada"


def tiny_llada_folder(out: str | Path, *, seed: int = 0) -> Path:
    from safetensors.torch import save_file
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    from src.models.tokenizer import char_tokenizer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for f in FIXTURE.iterdir():
        if f.suffix in (".py", ".json"):
            shutil.copy(f, out / f.name)
    config_cls = get_class_from_dynamic_module("configuration_tiny_llada.TinyLLaDAConfig", str(out))
    model_cls = get_class_from_dynamic_module("modeling_tiny_llada.TinyLLaDAModelLM", str(out))
    config = config_cls.from_pretrained(out)
    torch.manual_seed(seed)
    model = model_cls(config)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        out / "model.safetensors",
        metadata={"format": "pt"},
    )
    char_tokenizer().save_pretrained(out)
    return out
