"""Evaluation: clean and per-group metrics (:mod:`.metrics`), intervals and paired tests (:mod:`.statistics`),
robust accuracy over an ε grid and gradient-masking checks (:mod:`.robustness`), the robustness protocol of the
science reports (:mod:`.suite`), the validation scores sweeps and gates share (:mod:`.scoring`), the
paper-table experiments (:mod:`.experiment`) and Markdown reports (:mod:`.report`)."""
