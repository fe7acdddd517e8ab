"""Training machinery shared by the tokenizer trainer and the model trainer.

- `m4.train.checkpoint`: `Checkpointer` (orbax: async, keep-N, atomic, restore onto sharded
  abstract state, JSON extra state such as the data iterator position).
- `m4.train.metrics`: `MetricWriter` (JSONL + TensorBoard event files without TensorFlow),
  `Progress` (tqdm with steps/s and ETA).

Submodules are imported explicitly (not re-exported here) so `import m4.train` stays cheap.
"""
