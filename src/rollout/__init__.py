"""Rollout engines: what runs a policy to produce completions (AR generation with HF or vLLM, masked-diffusion
decoding and its block cache). Model construction stays in ``src.models``."""
