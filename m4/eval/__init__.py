"""The any-to-any evaluation matrix (`m4 eval`): generate each target from each single input
and from all other modalities together, on held-out built-in scenes, and score it against their
exact ground truth.

    from m4.eval import evaluate_matrix, write_report
    result = evaluate_matrix(model, tokenizers, n=256, seed=0)     # a JSON-ready dict
    write_report(result, "runs/demo")                              # eval.json + eval.png

Modules: metrics.py (per-target metrics and their directions), caption_score.py (caption
attribute accuracy), matrix.py (the cells and their generation), heatmap.py (eval.png),
report.py (files and a text table), cli.py (`m4 eval`).
"""

from m4.eval.caption_score import score_captions
from m4.eval.matrix import ALL_OTHERS, EvalError, evaluate_matrix
from m4.eval.metrics import PRIMARY, pose_metrics, target_metrics
from m4.eval.report import summary_table, write_report

__all__ = ["ALL_OTHERS", "EvalError", "PRIMARY", "evaluate_matrix", "pose_metrics",
           "score_captions", "summary_table", "target_metrics", "write_report"]
