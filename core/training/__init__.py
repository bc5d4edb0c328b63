"""Training: one engine (:mod:`.trainer`) with the paper's regimes as strategies (:mod:`.strategies`),
the files a stage leaves behind for exact resume (:mod:`.checkpoint`), the progress bar
(:mod:`.progress`), and the recipes (:mod:`.recipes`) that chain stages into the paper's five models,
evaluate them and write the bundle."""
