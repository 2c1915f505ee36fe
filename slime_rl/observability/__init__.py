"""Where metrics and logs go: JSONL and TensorBoard sinks, progress bars, plots. Nothing else sends them."""
