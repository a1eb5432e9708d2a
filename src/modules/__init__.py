"""Algorithm LightningModules (thin: sample/score, call ``src.losses``, log)."""
