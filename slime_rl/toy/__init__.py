"""Toy model, tokenizer and verifiable tasks for CPU tests and the toy example; built locally, no hub.

A user of the library's public hooks, never imported by it: `experiment=toy` names its `prepare` hook
(`experiment.prepare`: model, data, SFT demonstrations), its rewards (`rewards`, via `rollout.reward.kind=custom`)
and the SFT stage's demonstration file (`sft.path`).
"""
