"""Toy model, tokenizer and verifiable tasks for CPU tests and the toy example; built locally, no hub."""
