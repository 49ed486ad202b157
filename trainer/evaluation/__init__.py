"""Evaluation following X2CT-CLIP's protocols (You et al., arXiv 2503.02162).

* :mod:`.zeroshot`: zero-shot probabilities from latents and a positive/negative prompt pair.
* :mod:`.classification`: per-label and macro/micro/weighted AUROC, PR-AUC, F1, precision,
  recall and accuracy (scikit-learn).
* :mod:`.bootstrap`: 95% confidence intervals by resampling patients.
* :mod:`.retrieval`: Recall@K and MAP@K between radiographs, CT volumes and reports.
"""
