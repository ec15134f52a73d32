"""Nouns shared by the top-level scripts: config, data I/O, models, metrics, retrievers, run dirs."""
