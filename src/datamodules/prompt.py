"""Prompts with verifiable answers, for on-policy methods (OPD+, DiFFPO) and SFT warm-starts.

Sources: a generator (``tasks.math.arithmetic_problems``, ``reasoning_gym_problems``, planning
generators) or a local/hub dataset with a question and an answer column. ``answer_format``
turns raw solutions into final answers (``gsm8k``: after ``####``; ``boxed``: MATH's
``\\boxed{}``; ``raw``: as is). Batches are left-padded for generation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from src.datamodules.base import RecordDataModule, encode_bounded
from src.datamodules.errors import BadRecordError
from src.datamodules.tasks.math import boxed_answer, gsm8k_answer

ANSWER_FORMATS = {"raw": lambda s: str(s).strip(), "gsm8k": gsm8k_answer, "boxed": boxed_answer}


class PromptDataModule(RecordDataModule):
    """Prompt/answer pairs.

    Args:
        generator: callable ``(seed=...) -> list[{"prompt", "answer"}]``; or
        path: file/folder/hub dataset with ``question_key`` / ``answer_key`` columns.
        answer_format: ``raw | gsm8k | boxed``.
        prompt_template: text with a ``{question}`` placeholder (substituted as is; other braces,
            e.g. ``\\boxed{}``, are kept literally).
        chat: wrap the prompt in the tokenizer's chat template (user turn + generation prompt).
        max_prompt_length: longer prompts raise (``on_bad_record=error``) or are skipped.
        max_answer_length: token budget of ``target_ids`` (answer + EOS) used by SFT.
        solution_key: the record field SFT trains on (e.g. GSM8K's full worked ``answer``); default:
            a ``solution`` field when the record has one, else the parsed answer.
    """

    def __init__(
        self,
        *,
        question_key: str = "question",
        answer_key: str = "answer",
        answer_format: str = "raw",
        prompt_template: str = "{question}",
        chat: bool = False,
        max_prompt_length: int = 256,
        max_answer_length: int = 32,
        solution_key: str | None = None,
        reward: Callable[[str, str], float] | None = None,
        record_fn: Callable[[Any], dict[str, Any]] | None = None,
        level: int | str | None = None,
        category: str | None = None,
        answers_path: str | None = None,
        tools: list[Any] | None = None,
        rollout_engine: Any = None,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        # a task family's converter of its raw records (e.g. tool use: {"messages", "answer", "solution", "group"});
        # level / category / answers_path / tools are accepted only so that a preset can expose them as data.level
        # etc.: record_fn receives them through interpolation (configs/data/api_bank.yaml, bfcl.yaml,
        # gsm8k_calculator.yaml); rollout_engine likewise reaches module.rollout.backend (tool rollouts)
        self.record_fn = record_fn
        self.reward = reward  # the task's verifier: rollout modules must score with it (PostTrainModule.setup)
        if answer_format not in ANSWER_FORMATS:
            raise ValueError(f"data.answer_format={answer_format!r}; valid: {', '.join(ANSWER_FORMATS)}")
        if "{question}" not in prompt_template:
            raise ValueError("data.prompt_template must contain '{question}'")
        self.question_key, self.answer_key, self.answer_format = question_key, answer_key, answer_format
        self.prompt_template, self.chat = prompt_template, chat
        self.max_prompt_length, self.max_answer_length = max_prompt_length, max_answer_length
        self.solution_key = solution_key

    @property
    def mapping_hint(self) -> str:
        return (
            f"map your fields with {self.config_prefix}.question_key=<field> {self.config_prefix}.answer_key=<field> "
            f"(now {self.question_key!r} and {self.answer_key!r})"
        )

    def _row(self, rec: Any, where: str) -> dict[str, Any]:
        if self.record_fn is not None:
            try:
                rec = self.record_fn(rec)
            except ValueError as e:
                raise BadRecordError(f"{where}: {e}") from None
        if not isinstance(rec, dict):
            raise BadRecordError(f"{where}: expected an object, got {type(rec).__name__}")
        msgs = rec.get("messages")
        q = rec.get("prompt", rec.get(self.question_key)) if msgs is None else self._messages_text(msgs, where)
        a = rec.get(self.answer_key)
        if not isinstance(q, str) or not q.strip():
            raise BadRecordError(f"{where}: missing or empty question ({self.question_key!r} or 'prompt')")
        if a is None or not str(a).strip():
            raise BadRecordError(f"{where}: missing or empty answer ({self.answer_key!r})")
        try:
            answer = ANSWER_FORMATS[self.answer_format](a)
        except ValueError as e:
            raise BadRecordError(f"{where}: {e}") from None
        # plain substitution, not str.format: templates are full of LaTeX braces (\\boxed{})
        text = q if "prompt" in rec or msgs is not None else self.prompt_template.replace("{question}", q)
        if self.chat and msgs is None:
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
        # tokenised only as far as the limit needs (encode_bounded): a huge record costs bounded memory
        ids, total = encode_bounded(self.tokenizer, text, self.max_prompt_length + 1)
        bos = self.tokenizer.bos_token_id
        if bos is not None and (not ids or ids[0] != bos):
            ids, total = [bos, *ids], None if total is None else total + 1
        if len(ids) > self.max_prompt_length:
            n = f"{total} tokens" if total is not None else f"more than {self.max_prompt_length} tokens"
            raise BadRecordError(
                f"{where}: prompt has {n} > data.max_prompt_length={self.max_prompt_length} (raise "
                "data.max_prompt_length to keep such prompts)"
            )
        eos = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        # SFT target: a reference solution when the record has one (planning tasks, whose "answer"
        # is a verifier spec), else the answer itself
        if self.solution_key is not None:
            solution = rec.get(self.solution_key)
            if solution is None or not str(solution).strip():
                raise BadRecordError(f"{where}: missing or empty solution (data.solution_key={self.solution_key!r})")
        else:
            solution = rec.get("solution", answer)
        target = (encode_bounded(self.tokenizer, str(solution), self.max_answer_length)[0] + eos)[
            : self.max_answer_length
        ]
        row = {"prompt": text, "answer": answer, "prompt_ids": ids, "target_ids": target}
        if "group" in rec:  # the level / category a task family's metrics are grouped by
            row["group"] = str(rec["group"])
        return row

    def _messages_text(self, msgs: Any, where: str) -> str:
        """Chat turns as the prompt: the tokenizer's chat template with a generation prompt (``chat: true``),
        else the turns' contents joined by blank lines."""
        if (
            not isinstance(msgs, list)
            or not msgs
            or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in msgs
            )
        ):
            raise BadRecordError(f"{where}: 'messages' must be a non-empty list of {{role, content}} turns")
        if not self.chat:
            return "\n\n".join(m["content"] for m in msgs)
        if not getattr(self.tokenizer, "chat_template", None):
            raise BadRecordError(f"{where}: chat prompts need a tokenizer with a chat template (or data.chat=false)")
        return self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)

    def collate(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        return collate_prompts(rows, pad_id=self.tokenizer.pad_token_id)


def collate_prompts(rows: list[dict[str, Any]], *, pad_id: int) -> dict[str, Any]:
    """Left-padded ``prompt_ids`` / ``prompt_mask`` (for generation) plus right-padded SFT targets."""
    P = max(len(r["prompt_ids"]) for r in rows)
    A = max(len(r["target_ids"]) for r in rows)
    ids = torch.full((len(rows), P), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), P), dtype=torch.long)
    tgt = torch.full((len(rows), A), pad_id, dtype=torch.long)
    tmask = torch.zeros((len(rows), A), dtype=torch.long)
    for i, r in enumerate(rows):
        p, t = r["prompt_ids"], r["target_ids"]
        ids[i, P - len(p) :] = torch.tensor(p)
        mask[i, P - len(p) :] = 1
        tgt[i, : len(t)] = torch.tensor(t)
        tmask[i, : len(t)] = 1
    return {
        "prompt_ids": ids,
        "prompt_mask": mask,
        "target_ids": tgt,
        "target_mask": tmask,
        "prompt": [r["prompt"] for r in rows],
        "answer": [r["answer"] for r in rows],
        "index": torch.tensor([r["index"] for r in rows]),
    }
