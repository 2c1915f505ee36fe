"""Rollout engines: the SGLang protocol client, engine and router processes, and the native engine."""
