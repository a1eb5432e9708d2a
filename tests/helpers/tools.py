"""A tool engine whose first policy turn is a fixed calculator call (a random tiny model never writes one), so a
test exercises the whole loop: the call runs, its result becomes environment tokens, and the real model samples
the following turns from there (keyed, with its KV cache)."""

import torch

from src.rollout.multiturn import ToolRolloutEngine

FIRST = '<tool_call>\n{"name": "calculator", "parameters": {"expression": "2+3"}}\n</tool_call>'


class FirstTurnCalls(ToolRolloutEngine):
    def _turn_hf(self, model, cur, cache, budget, prompt_width, sampling, key):
        if cur.shape[1] == prompt_width:  # the first turn of a row
            ids = torch.tensor(self.tokenizer(FIRST, add_special_tokens=False)["input_ids"], device=cur.device)
            return ids[:budget], None
        return super()._turn_hf(model, cur, cache, budget, prompt_width, sampling, key)
