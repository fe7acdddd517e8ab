"""Data: the built-in scenes dataset and (later) the other data formats and pipelines."""
