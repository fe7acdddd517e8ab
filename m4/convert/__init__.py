"""Import of checkpoints from other implementations (apple/ml-4m: `m4.convert.ml4m`)."""
