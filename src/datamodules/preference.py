"""Preference (prompt, chosen, rejected) data for MallowsPO / DPO: files, hub, or generated.

Records are either ``{"prompt", "chosen", "rejected"}`` strings, or chat format
``{"chosen": [messages], "rejected": [messages]}`` (the prompt is the shared prefix of messages; the
last assistant turn is the response), optionally with ``"prompt": [messages]``, or *implicit-prompt*
transcripts (Anthropic HH-RLHF): ``{"chosen": "\n\nHuman: ...\n\nAssistant: ...", "rejected": ...}``
with no prompt field, whose prompt is the longest shared prefix that ends at the last
``Assistant:`` marker. ``transcript_format=chat`` turns such transcripts into chat messages, so the
model's chat template applies. An optional
``"dispersion"`` column gives the per-example neg-log dispersion ``w = -log phi`` (MallowsPO's
``dispersion.source=given``).

Malformed records (missing field, empty response, chosen == rejected, wrong type) raise
``BadRecordError`` naming the source and row, or with ``on_bad_record=skip`` are dropped and
counted by reason and logged (``RecordDataModule``).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from src.datamodules.base import RecordDataModule, encode_bounded
from src.datamodules.errors import BadRecordError

log = logging.getLogger(__name__)


def _messages_ok(x: Any) -> bool:
    return isinstance(x, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in x)


ASSISTANT, HUMAN = "\n\nAssistant:", "\n\nHuman:"
TRANSCRIPT_FORMATS = ("text", "chat")


def split_transcripts(chosen: str, rejected: str, *, where: str) -> tuple[str, str, str]:
    """Implicit prompt: the longest common prefix of the two transcripts, cut back to the end of its last
    ``Assistant:`` marker; the responses are what follows (HH-RLHF keeps the space after the colon in
    the response, as TRL's ``extract_prompt`` does)."""
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    cut = chosen.rfind(ASSISTANT, 0, n)
    if cut < 0 or cut + len(ASSISTANT) > n:
        raise BadRecordError(
            f"{where}: no prompt field, and chosen/rejected share no prefix ending at an "
            f"{ASSISTANT.strip()!r} turn (implicit-prompt transcripts need one)"
        )
    cut += len(ASSISTANT)
    return chosen[:cut], chosen[cut:], rejected[cut:]


def transcript_messages(text: str, *, where: str) -> list[dict[str, str]]:
    """``"\n\nHuman: a\n\nAssistant: b ..."`` -> ``[{"role": "user", "content": "a"}, {"role": "assistant", ...}]``.
    A trailing empty ``Assistant:`` (the prompt's generation slot) is dropped."""
    import re

    parts = re.split(r"(\n\nHuman:|\n\nAssistant:)", text)
    if parts[0].strip():
        raise BadRecordError(f"{where}: transcript must start with {HUMAN.strip()!r}, got {parts[0][:40]!r}")
    msgs = []
    for marker, content in zip(parts[1::2], parts[2::2]):
        role = "user" if marker == HUMAN else "assistant"
        msgs.append({"role": role, "content": content.strip()})
    if msgs and msgs[-1]["role"] == "assistant" and not msgs[-1]["content"]:
        msgs.pop()
    if not msgs:
        raise BadRecordError(f"{where}: empty transcript")
    return msgs


def normalize_record(
    rec: Any, *, tokenizer: PreTrainedTokenizerBase, where: str, transcript_format: str = "text"
) -> dict[str, Any]:
    """Return ``{"prompt", "chosen", "rejected", ["dispersion"]}`` strings, or raise ``BadRecordError``."""
    if not isinstance(rec, dict):
        raise BadRecordError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    for key in ("chosen", "rejected"):
        if key not in rec:
            raise BadRecordError(f"{where}: missing field {key!r} (have: {sorted(rec)})")
        if rec[key] is None:
            raise BadRecordError(f"{where}: field {key!r} is null")
    chosen, rejected, prompt = rec["chosen"], rec["rejected"], rec.get("prompt")
    if prompt is None and isinstance(chosen, str) and isinstance(rejected, str):
        prompt, chosen, rejected = split_transcripts(chosen, rejected, where=where)
        if transcript_format == "chat":
            prompt = transcript_messages(prompt, where=where)
            chosen = [{"role": "assistant", "content": chosen.strip()}]
            rejected = [{"role": "assistant", "content": rejected.strip()}]
    if _messages_ok(chosen) and _messages_ok(rejected):
        if isinstance(prompt, str):  # UltraFeedback-binarized: the prompt turns are inside the message lists
            prompt = None
        if prompt is None:  # shared prefix of the two conversations
            n = 0
            while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
                n += 1
            prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
        if not _messages_ok(prompt) or not prompt:
            raise BadRecordError(f"{where}: chat-format record needs a non-empty prompt (list of messages)")
        if (
            len(chosen) != 1
            or len(rejected) != 1
            or chosen[0]["role"] != "assistant"
            or rejected[0]["role"] != "assistant"
        ):
            raise BadRecordError(f"{where}: chosen/rejected must end in exactly one assistant turn after the prompt")
        if tokenizer.chat_template is None:
            raise BadRecordError(f"{where}: chat-format record but the tokenizer has no chat template")
        prompt = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        chosen, rejected = chosen[0]["content"], rejected[0]["content"]
    for key, val in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)):
        if not isinstance(val, str):
            raise BadRecordError(
                f"{where}: field {key!r} must be a string or a list of messages, got {type(val).__name__}"
            )
    if not prompt.strip():
        raise BadRecordError(f"{where}: empty prompt")
    for key, val in (("chosen", chosen), ("rejected", rejected)):
        if not val.strip():
            raise BadRecordError(f"{where}: empty {key} response")
    if chosen == rejected:
        raise BadRecordError(f"{where}: chosen == rejected (no preference signal)")
    out: dict[str, Any] = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    if rec.get("dispersion") is not None:
        w = rec["dispersion"]
        if not isinstance(w, (int, float)) or not w >= 0 or w != w or w == float("inf"):
            raise BadRecordError(f"{where}: dispersion must be a finite number >= 0 (w = -log phi), got {w!r}")
        out["dispersion"] = float(w)
    return out


def tokenize_pair(
    rec: dict[str, Any], tokenizer: PreTrainedTokenizerBase, *, max_length: int, max_prompt_length: int
) -> dict[str, Any]:
    """Token ids for prompt / chosen / rejected with truncation that never empties the prompt.

    The prompt gets a BOS (if the tokenizer has one and it is not already there) and keeps its
    *end* when longer than ``max_prompt_length`` (the question is usually at the end); responses get
    an EOS and are cut to ``max_length - len(prompt)`` (>= 1 token since max_prompt_length < max_length).
    """
    bos = tokenizer.bos_token_id
    # each text is tokenised only as far as its budget needs (encode_bounded): a huge record is cheap
    prompt, total = encode_bounded(tokenizer, rec["prompt"], max_prompt_length, keep="end")
    add_bos = bos is not None and (not prompt or prompt[0] != bos)
    if add_bos:
        prompt = [bos, *prompt]
    prompt_cut = total is None or total + add_bos > max_prompt_length
    if len(prompt) > max_prompt_length:
        prompt = ([bos] if bos is not None else []) + prompt[-(max_prompt_length - (bos is not None)) :]
    budget = max_length - len(prompt)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    out: dict[str, Any] = {"prompt_ids": prompt, "prompt_cut": prompt_cut, "response_cut": False}
    for key in ("chosen", "rejected"):
        ids, n = encode_bounded(tokenizer, rec[key], budget)
        out[f"{key}_ids"] = (ids + eos)[:budget]
        out["response_cut"] |= n is None or n + len(eos) > budget
    return out


class PreferenceDataModule(RecordDataModule):
    """Pairs for preference optimisation; one of ``path`` (file/folder/hub name) or ``generator``.

    Args:
        path: local file/folder or hub dataset name (loaded with ``datasets``).
        val_path: optional separate validation source; else ``val_fraction`` of ``path`` (seeded).
        generator: callable returning a list of records (synthetic tasks), called with ``seed``.
        max_length, max_prompt_length: token budgets (see :func:`tokenize_pair`).
        on_bad_record: ``error`` (default) or ``skip`` (drop and count).
    """

    mapping_hint = (
        "map your fields with data.prompt_key=<field> data.chosen_key=<field> data.rejected_key=<field> "
        "(TRL's column names; prompt_key may be null for HH-style transcripts)"
    )

    def __init__(
        self,
        *,
        max_length: int = 512,
        max_prompt_length: int = 256,
        transcript_format: str = "text",
        prompt_key: str | None = "prompt",
        chosen_key: str = "chosen",
        rejected_key: str = "rejected",
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.keys = {"prompt": prompt_key, "chosen": chosen_key, "rejected": rejected_key}
        self.cut = {"prompt": 0, "response": 0}  # records truncated to the token budgets (said in setup)
        self.first_cut: dict[str, str] = {}
        if not 1 <= max_prompt_length < max_length:
            raise ValueError(
                f"need 1 <= data.max_prompt_length ({max_prompt_length}) < data.max_length ({max_length})"
            )
        if transcript_format not in TRANSCRIPT_FORMATS:
            raise ValueError(f"data.transcript_format={transcript_format!r}; valid: {', '.join(TRANSCRIPT_FORMATS)}")
        self.max_length, self.max_prompt_length = max_length, max_prompt_length
        self.transcript_format = transcript_format

    def _mapped(self, rec: Any) -> Any:
        """The record with the user's field names (``data.*_key``) renamed to ours."""
        if not isinstance(rec, dict) or all(k == ours for ours, k in self.keys.items()):
            return rec
        out = {k: v for k, v in rec.items() if k not in ("prompt", "chosen", "rejected")}
        for ours, theirs in self.keys.items():
            if theirs is not None and theirs in rec:
                out[ours] = rec[theirs]
        return out

    def _row(self, rec: Any, where: str) -> dict[str, Any]:
        norm = normalize_record(
            self._mapped(rec), tokenizer=self.tokenizer, where=where, transcript_format=self.transcript_format
        )
        ids = tokenize_pair(norm, self.tokenizer, max_length=self.max_length, max_prompt_length=self.max_prompt_length)
        if ids["chosen_ids"] == ids["rejected_ids"]:
            raise BadRecordError(f"{where}: chosen and rejected are identical after truncation")
        for part, cut in (("prompt", ids.pop("prompt_cut")), ("response", ids.pop("response_cut"))):
            if cut:
                self.cut[part] += 1
                self.first_cut.setdefault(part, where)
        return {**norm, **ids}

    def setup(self, stage: str | None = None) -> None:
        fresh = self.train_set is None
        super().setup(stage)
        if fresh and any(self.cut.values()):  # truncation is never silent: how many, to what, where the first is
            n = len(self.train_set) + len(self.val_set)
            if self.cut["prompt"]:
                log.warning(
                    "%d of %d prompts were longer than data.max_prompt_length=%d tokens and were cut to that length, "
                    "keeping their end (the question is usually last; first: %s). Raise data.max_prompt_length to "
                    "keep more",
                    self.cut["prompt"],
                    n,
                    self.max_prompt_length,
                    self.first_cut["prompt"],
                )
            if self.cut["response"]:
                log.warning(
                    "%d of %d pairs had a response cut to fit data.max_length=%d tokens with its prompt (first: %s)",
                    self.cut["response"],
                    n,
                    self.max_length,
                    self.first_cut["response"],
                )

    def collate(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        return collate_pairs(rows, pad_id=self.tokenizer.pad_token_id)


def collate_pairs(rows: list[dict[str, Any]], *, pad_id: int) -> dict[str, Any]:
    """Stack ``[prompt+chosen ; prompt+rejected]`` into one ``(2B, L)`` right-padded batch.

    ``loss_mask`` marks response tokens (the positions whose log-prob counts); one forward over the
    concatenation scores both halves (TRL ``concatenated_forward``).
    """
    seqs, masks = [], []
    for half in ("chosen_ids", "rejected_ids"):
        for r in rows:
            seqs.append(r["prompt_ids"] + r[half])
            masks.append([0] * len(r["prompt_ids"]) + [1] * len(r[half]))
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), L), dtype=torch.long)
    lm = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, (s, m) in enumerate(zip(seqs, masks)):
        ids[i, : len(s)] = torch.tensor(s)
        attn[i, : len(s)] = 1
        lm[i, : len(m)] = torch.tensor(m)
    batch: dict[str, Any] = {
        "input_ids": ids,
        "attention_mask": attn,
        "loss_mask": lm,
        "index": torch.tensor([r["index"] for r in rows]),
        "prompt": [r["prompt"] for r in rows],
    }
    if all("dispersion" in r for r in rows):
        batch["dispersion"] = torch.tensor([r["dispersion"] for r in rows], dtype=torch.float32)
    return batch
