"""Evaluation (MM1.5 §4.1, Tables 4–14): metrics, per-category averages and MMBase.

:mod:`mm15.eval.metrics` scores one prediction against its references (exact match, multiple
choice, Acc@IoU≥0.5 boxes, points in boxes) and averages scores per category; benchmark-specific
metrics (VQA accuracy, ANLS, relaxed accuracy, ...) join it as they are needed.
"""
