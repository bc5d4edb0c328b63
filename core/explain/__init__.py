"""Explanations: Integrated Gradients, the maps and pictures made from it, and the scores that say
whether an attribution means something.

* :mod:`.ig` — the :class:`~.ig.Attribution` result, target and baseline resolution, and captum's IG
  on a BatchNorm-folded, channels_last twin of the model (one fixed rule, :data:`~.ig.SCORING_STEPS`
  points, for every scored map);
* :mod:`.baselines` — the reference images (black, blur, noise, mean) behind one registry and one
  Gaussian blur, for IG and for deletion / insertion;
* :mod:`.maps` — attributions ``[B, C, H, W]`` folded into per-pixel maps ``[B, H, W]``;
* :mod:`.plots` — the overlay and heatmap PNGs and the clean-vs-attacked grid (the paper's Fig. 1);
* :mod:`.quality` — localisation, faithfulness (deletion / insertion against random orders,
  baseline-aware infidelity), robustness, the randomisation sanity checks and the plain-gradient
  control map;
* :mod:`.checks` — the option and image checks they share.

Nothing is imported here, so importing the package needs neither captum nor matplotlib.
"""
