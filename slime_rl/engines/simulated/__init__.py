"""Simulated engine: the SGLang HTTP protocol under a calibrated cost model, many engines per process, no model.

For cluster-scale what-ifs (hundreds of engines) on one box. `python -m slime_rl.engines.simulated --num-engines N`
serves N engines; `SimulatedEngines` (launcher.py) starts such a process and yields the URLs. Modules: cost
(step-time model and calibration), lengths (response lengths), scheduler (continuous batching on the event loop),
engine (what the native engine's HTTP app needs), serve (many uvicorn servers on one loop), launcher.
"""
