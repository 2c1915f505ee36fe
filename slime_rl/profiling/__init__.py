"""Rollout throughput profiler: request lifecycles, time attribution, a Perfetto trace, HTML reports, sweeps."""
