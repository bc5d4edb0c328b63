"""Releasing a model: the hash-checked bundle (:mod:`.bundle`), the promotion gates (:mod:`.gates`), the
production pointer with its lock and audit log (:mod:`.pointer`) and the BentoML model store (:mod:`.store`)."""
