"""Explanations: Integrated Gradients and its maps and pictures (:mod:`.ig`), and the scores that say whether
an attribution means something (:mod:`.quality`: localisation, faithfulness, the randomisation check)."""
