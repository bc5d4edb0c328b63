"""Evaluation: clean and per-group metrics with CIs (:mod:`.metrics`), robust accuracy over an ε grid
and gradient-masking checks (:mod:`.robustness`), the validation scores sweeps and gates share
(:mod:`.scoring`), the paper-table experiments (:mod:`.experiment`) and Markdown reports (:mod:`.report`)."""
