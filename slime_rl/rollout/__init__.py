"""Rollout: turn prompt groups from the buffer into scored, filtered groups, through the engine protocol."""
