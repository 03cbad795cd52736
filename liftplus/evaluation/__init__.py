"""Evaluation: the forward over test-time crops (``inference``), accuracies (``metrics``),
eval.json (``report``, ``metric_names``) and predictions on new images (``predict``)."""
