"""Multi-turn rollouts that call tools: the turn loop.

``module.rollout.backend`` = ``{_target_: src.rollout.multiturn.ToolRolloutEngine, _partial_: true, tools: [...]}``.
Each row (``n`` per prompt) runs, up to ``max_turns`` policy turns and a total budget of ``max_new_tokens``
completion tokens (the policy's and the environment's together):

1. the policy generates until ``</tool_call>``, its EOS, or the budget;
2. the calls in that turn's last ``<tool_call>`` block are read with the tool-use task family's parser
   (one JSON object ``{"name", "parameters"}`` per line) and run by :class:`src.rollout.tools.ToolExecutor`
   (time limit, size cap; failures become error messages);
3. the results are appended as **environment tokens**: the chat template's tool turn where the tokenizer's
   template renders a ``tool`` role (with its glue, e.g. ``<|im_end|>`` and the next assistant header), else
   ``<tool_response> ... </tool_response>`` as text; they get ``action_mask`` 0 and ``attention_mask`` 1;
4. the policy continues from there. A tool result that would not leave room in the budget is not appended (the
   rollout ends on a policy turn, as TRL and verl do).

The HF path keeps each row's KV cache across turns: the next ``generate`` call receives the cache and computes
only the tokens it does not cover (the last sampled token and the tool response), never the whole prefix again.
Rows run one at a time (no padding between turns); with ``keys`` the draws of row ``b`` at completion position
``t`` depend on ``(keys[b], t)`` only, so a rollout does not depend on its batch or the world size. ``backend=vllm``
(GPU machines, ``pip install vllm``) runs the same loop on vLLM with its prefix cache; it is import-guarded and
not exercised by the CPU tests.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList

from src.datamodules.tasks.tool_use import parse_call, tool_response_text
from src.rollout.hf import sampling_kwargs
from src.rollout.tools import Tool, ToolExecutor, error_message
from src.rollout.types import ToolRollout

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
_MARK = "\u2063ASSISTANT-TURN\u2063"  # marks where the policy's text sits when rendering the glue


class StopAfterText(StoppingCriteria):
    """Stops a one-row ``generate`` once the text generated since ``start`` contains ``text``."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, text: str, start: int) -> None:
        self.tok, self.text, self.start = tokenizer, text, start

    def __call__(self, input_ids: Tensor, scores: Tensor, **kw: Any) -> Tensor:
        window = input_ids[0, max(self.start, input_ids.shape[1] - len(self.text) - 2) :]
        hit = self.text in self.tok.decode(window, skip_special_tokens=False)
        return torch.full((input_ids.shape[0],), hit, dtype=torch.bool, device=input_ids.device)


def read_calls(text: str) -> tuple[list[dict[str, Any]], str | None]:
    """The calls of the last ``<tool_call>`` block of a turn, or an error message for the policy."""
    end = text.rfind(CALL_CLOSE)
    start = text.rfind(CALL_OPEN, 0, end) if end >= 0 else -1
    if start < 0:
        return [], f"no {CALL_OPEN} ... {CALL_CLOSE} block"
    lines = [ln.strip() for ln in text[start + len(CALL_OPEN) : end].split("\n") if ln.strip()]
    if not lines:
        return [], f"an empty {CALL_OPEN} block"
    calls = []
    for i, line in enumerate(lines, 1):
        try:
            calls.append(parse_call(line))
        except ValueError as e:  # bad JSON, not {"name", "parameters"}, too deep, ...
            return [], f"tool call line {i} could not be read: {e}"
    return calls, None


class ToolRolloutEngine:
    """A :class:`src.rollout.types.RolloutEngine` whose rollouts call tools (module docstring).

    Args:
        tokenizer: the policy's tokenizer.
        tools: :class:`src.rollout.tools.Tool` objects (Hydra targets).
        max_turns: policy turns per rollout (a tool response follows each but the last).
        max_calls_per_turn: calls run per turn (the rest get an error message).
        timeout, max_result_chars, isolation: :class:`src.rollout.tools.ToolExecutor`'s limits.
        use_chat_template: render tool results as the chat template's tool turn when it has one (set it like
            ``data.chat``: plain-text prompts get plain ``<tool_response>`` blocks).
        backend: ``hf`` (``generate`` with the KV cache kept across turns) or ``vllm``.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        tools: list[Tool],
        max_turns: int = 3,
        max_calls_per_turn: int = 4,
        timeout: float = 2.0,
        max_result_chars: int = 2000,
        isolation: str = "process",
        use_chat_template: bool = True,
        backend: str = "hf",
    ) -> None:
        if max_turns < 1 or max_calls_per_turn < 1:
            raise ValueError(f"need max_turns >= 1 and max_calls_per_turn >= 1, got {max_turns}, {max_calls_per_turn}")
        if backend not in ("hf", "vllm"):
            raise ValueError(f"tool rollout backend={backend!r}; valid: hf, vllm")
        if not tools:
            raise ValueError("a tool rollout needs at least one tool (module.rollout.backend.tools)")
        self.tokenizer, self.tools = tokenizer, list(tools)
        self.max_turns, self.max_calls_per_turn, self.backend = max_turns, max_calls_per_turn, backend
        self.executor = ToolExecutor(
            self.tools, timeout=timeout, max_result_chars=max_result_chars, isolation=isolation
        )
        self.template_glue = use_chat_template and self._probe_template()
        self._vllm = None
        if backend == "vllm":
            import importlib.util

            if importlib.util.find_spec("vllm") is None:
                raise ImportError("tool rollouts with backend=vllm need vLLM: `pip install vllm`, or use backend=hf")

    # ---- environment tokens ------------------------------------------------------------------------------------
    def _probe_template(self) -> bool:
        """Whether the chat template renders ``tool`` turns (then tool results use it, with its glue)."""
        if not getattr(self.tokenizer, "chat_template", None):
            return False
        try:
            text = self._render(["RESULT-PROBE"])
        except Exception:
            return False
        return "RESULT-PROBE" in text

    def _render(self, results: list[str]) -> str:
        msgs = [
            {"role": "user", "content": "question"},
            {"role": "assistant", "content": _MARK},
            *({"role": "tool", "content": r} for r in results),
        ]
        text = self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return text[text.index(_MARK) + len(_MARK) :]

    def environment_text(self, results: list[str]) -> str:
        """What follows a policy turn that called tools: the template's tool turn(s) and the next assistant
        header, or ``<tool_response>`` blocks as text."""
        if self.template_glue:
            return self._render(results)
        return tool_response_text(results)

    def _environment(self, text: str) -> tuple[list[int], list[str], int, int]:
        """Tool results for a turn's text: ``(token ids, result texts, calls run, errors)``."""
        calls, err = read_calls(text)
        results: list[str] = []
        errors = 0
        if err is not None:
            results, errors = [error_message(err)], 1
        for i, c in enumerate(calls):
            if i >= self.max_calls_per_turn:
                ok, out = False, error_message(f"more than {self.max_calls_per_turn} calls in one turn")
            else:
                ok, out = self.executor.call(c["name"], c["parameters"])
            results.append(out)
            errors += not ok
        ids = self.tokenizer(self.environment_text(results), add_special_tokens=False)["input_ids"]
        return ids, results, len(calls), errors

    # ---- the loop ----------------------------------------------------------------------------------------------
    def _turn_hf(self, model, cur: Tensor, cache, budget: int, prompt_width: int, sampling: dict, key) -> tuple:
        tok = self.tokenizer
        kw = sampling_kwargs(
            sampling["do_sample"],
            sampling["temperature"],
            sampling["top_p"],
            None if key is None else key[None],
            prompt_width=prompt_width,
        )
        out = model.generate(
            input_ids=cur,
            attention_mask=torch.ones_like(cur),
            past_key_values=cache,
            max_new_tokens=budget,
            stopping_criteria=StoppingCriteriaList([StopAfterText(tok, CALL_CLOSE, cur.shape[1])]),
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            return_dict_in_generate=True,
            use_cache=True,
            **kw,
        )
        return out.sequences[0, cur.shape[1] :], out.past_key_values

    def _row(self, model, prompt: Tensor, budget: int, sampling: dict, key) -> dict[str, Any]:
        tok = self.tokenizer
        cur, cache = prompt[None], None
        comp: list[int] = []
        action: list[int] = []
        transcript: list[dict[str, str]] = []
        turns = calls = errors = 0
        for _ in range(self.max_turns):
            left = budget - len(comp)
            if left <= 0:
                break
            if self.backend == "vllm":  # pragma: no cover - needs a GPU and vllm
                new, cache = self._turn_vllm(model, cur, left, sampling), None
            else:
                new, cache = self._turn_hf(model, cur, cache, left, prompt.shape[0], sampling, key)
            new = new[:left]
            eos = (new == tok.eos_token_id).nonzero() if tok.eos_token_id is not None else new[:0]
            ended = len(eos) > 0
            if ended:
                new = new[: int(eos[0]) + 1]  # nothing after the EOS
            comp += new.tolist()
            action += [1] * len(new)
            turns += 1
            text = tok.decode(new, skip_special_tokens=True)
            transcript.append({"role": "assistant", "content": text})
            cur = torch.cat([cur, new[None].to(cur.device)], 1)
            if ended or CALL_CLOSE not in text or turns == self.max_turns:
                break
            env, results, n_calls, n_err = self._environment(text)
            if len(comp) + len(env) >= budget:  # no room for the result and an answer: the rollout ends here
                break
            comp += env
            action += [0] * len(env)
            calls, errors = calls + n_calls, errors + n_err
            transcript.append({"role": "tool", "content": "\n".join(results)})
            cur = torch.cat([cur, torch.tensor([env], dtype=cur.dtype, device=cur.device)], 1)
        return {"comp": comp, "action": action, "turns": turns, "calls": calls, "errors": errors, "log": transcript}

    def _turn_vllm(self, model, cur: Tensor, budget: int, sampling: dict) -> Tensor:  # pragma: no cover
        from vllm import LLM, SamplingParams

        if self._vllm is None:
            self._vllm = LLM(model=model.name_or_path, enable_prefix_caching=True)
        runner = self._vllm.llm_engine.model_executor.driver_worker.model_runner.model
        runner.load_weights(model.state_dict().items())
        params = SamplingParams(
            max_tokens=budget,
            temperature=sampling["temperature"] if sampling["do_sample"] else 0.0,
            top_p=sampling["top_p"],
            stop=[CALL_CLOSE],
            include_stop_str_in_output=True,
        )
        out = self._vllm.generate([{"prompt_token_ids": cur[0].tolist()}], params, use_tqdm=False)
        return torch.tensor(list(out[0].outputs[0].token_ids), dtype=cur.dtype)

    @torch.no_grad()
    def generate(
        self,
        model: PreTrainedModel,
        prompt_ids: Tensor,
        prompt_mask: Tensor,
        *,
        n: int = 1,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_p: float = 1.0,
        do_sample: bool = True,
        keys: Tensor | None = None,
    ) -> ToolRollout:
        """``n`` multi-turn rollouts per prompt (rows grouped by prompt); ``max_new_tokens`` bounds the whole
        completion (policy and tool tokens)."""
        if max_new_tokens < 1 or n < 1:
            raise ValueError(f"need max_new_tokens >= 1 and n >= 1, got {max_new_tokens}, {n}")
        if keys is not None and keys.shape[0] != prompt_ids.shape[0] * n:
            raise ValueError(f"keys has {keys.shape[0]} rows, the rollout has {prompt_ids.shape[0] * n}")
        if keys is not None and self.backend == "vllm":
            raise ValueError("module.rng=keyed needs backend=hf; vLLM samples with its own RNG")
        tok = self.tokenizer
        sampling = {"do_sample": do_sample, "temperature": temperature, "top_p": top_p}
        ids, mask = prompt_ids.repeat_interleave(n, 0), prompt_mask.repeat_interleave(n, 0)
        was_training = model.training
        model.eval()
        try:
            rows = [
                self._row(model, ids[r][mask[r].bool()], max_new_tokens, sampling, None if keys is None else keys[r])
                for r in range(ids.shape[0])
            ]
        finally:
            model.train(was_training)
        N, T, dev = ids.shape[0], max_new_tokens, prompt_ids.device
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        comp = torch.full((N, T), pad, dtype=ids.dtype, device=dev)
        present = torch.zeros(N, T, dtype=mask.dtype, device=dev)
        action = torch.zeros(N, T, dtype=torch.long, device=dev)
        for r, row in enumerate(rows):
            k = len(row["comp"])
            comp[r, :k] = torch.tensor(row["comp"], dtype=ids.dtype)
            present[r, :k] = 1
            action[r, :k] = torch.tensor(row["action"])
        full = tok.batch_decode(comp.masked_fill(present == 0, pad), skip_special_tokens=True)
        texts = tok.batch_decode(comp.masked_fill(action == 0, pad), skip_special_tokens=True)  # the policy's own
        count = lambda key: torch.tensor([row[key] for row in rows], device=dev)  # noqa: E731
        return ToolRollout(
            torch.cat([ids, comp], 1),
            torch.cat([mask, present], 1),
            action,
            prompt_ids.shape[1],
            texts,
            full_texts=full,
            turns=count("turns"),
            tool_calls=count("calls"),
            tool_errors=count("errors"),
            transcripts=[row["log"] for row in rows],
        )
