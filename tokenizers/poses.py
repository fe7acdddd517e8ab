"""Poses tokenizer: each figure's 15 joints (x, y, visible) -> 8 tokens; absent figures -> id 0.

    m4 tokenizer train --config tokenizers/poses.py --workdir runs/tok_poses
Tokens per scene: max_figures * tokens_per_figure (2 * 8 = 16); vocabulary: codebook + 1.
Trained on single figures (every figure of the training scenes), evaluated on whole scenes.
"""

from m4.tokenizers.configs import poses_config


def get_config(arg=None):
    return poses_config(arg)
