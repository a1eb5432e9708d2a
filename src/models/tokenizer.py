"""Tokenizers built locally (no hub): a character-level tokenizer and a trained byte-level BPE.

Both are wrapped as ``PreTrainedTokenizerFast`` with ``<pad> <bos> <eos> <mask> <unk>`` special
tokens and a minimal chat template, so every code path (chat templating, ``save_pretrained``,
``AutoTokenizer.from_pretrained(folder)``) is the one a hub tokenizer takes.
"""

from __future__ import annotations

import string
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

SPECIAL_TOKENS = {
    "pad_token": "<pad>",
    "bos_token": "<bos>",
    "eos_token": "<eos>",
    "mask_token": "<mask>",
    "unk_token": "<unk>",
}
DEFAULT_ALPHABET = string.ascii_letters + string.digits + string.punctuation + " \n"
# One turn per line: "user: ...\nassistant: ...<eos>"; generation prompt ends in "assistant: ".
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def _wrap(tok: Tokenizer, model_max_length: int) -> PreTrainedTokenizerFast:
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=model_max_length, **SPECIAL_TOKENS)
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "right"
    return fast


def char_tokenizer(alphabet: str = DEFAULT_ALPHABET, *, model_max_length: int = 2048) -> PreTrainedTokenizerFast:
    """A character-level tokenizer over ``alphabet`` (deterministic ids: specials first, then chars).

    Unknown characters map to ``<unk>``; decoding joins characters with no spaces.
    """
    chars = list(dict.fromkeys(alphabet))  # dedupe, keep order
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS.values())}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    return _wrap(tok, model_max_length)


def train_bpe_tokenizer(
    texts: Iterable[str], *, vocab_size: int = 512, model_max_length: int = 2048
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` (milliseconds for small corpora)."""
    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return _wrap(tok, model_max_length)


def load_tokenizer(
    name_or_path: str, *, gguf_file: str | None = None, trust_remote_code: bool = False, **kwargs
) -> PreTrainedTokenizerBase:
    """Load a tokenizer from the hub or a local folder; make sure a pad token exists.

    ``trust_remote_code``: the model's setting (a remote-code model's folder makes ``AutoTokenizer`` read its
    config, which otherwise asks "run custom code? [y/N]" on every load)."""
    kw = {"gguf_file": gguf_file} if gguf_file else {}
    tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **kw, **kwargs)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
