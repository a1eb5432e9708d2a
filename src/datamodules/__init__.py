"""DataModules: prompts (math, planning) and preference pairs (dialogue)."""
