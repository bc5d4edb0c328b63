"""Training: one engine (:mod:`.trainer`) with the paper's regimes as strategies, and the recipes
(:mod:`.recipes`) that chain stages into the paper's five models, evaluate them and write the bundle."""
