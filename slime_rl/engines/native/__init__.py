"""Native engine: an SGLang-protocol HTTP server with continuous batching over a transformers causal LM.

Run it with `python -m slime_rl.engines.native --model-path DIR --port P`. Modules: kv_cache (ragged
preallocated K/V), runner (forwards), sampling, scheduler (continuous batching, abort, pause),
weights (disk and torch.distributed sources), engine (wiring), app (HTTP).
"""
