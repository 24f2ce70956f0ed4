"""Ray Data pipelines, the Ray Train loop, memory-bank fitting, evaluation and export."""
