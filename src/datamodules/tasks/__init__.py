"""Task family: generated or loaded examples with semantics (rewards, preferences)."""
