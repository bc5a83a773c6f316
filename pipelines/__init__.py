"""End-to-end recipes, each a `run(cfg, log=print)` that reads top to bottom."""
