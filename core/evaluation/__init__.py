"""Evaluation: clean and per-group metrics with CIs, robust accuracy and gradient-masking checks
(:mod:`.metrics`), the validation scores sweeps and gates share (:mod:`.scoring`), the paper-table
experiments (:mod:`.experiment`) and Markdown reports (:mod:`.report`)."""
