"""Model factories: ``factory(tokenizer) -> PreTrainedModel``."""
