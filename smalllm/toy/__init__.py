"""The linear-mixture toy of Huang et al. (Sec. 3): K linear-regression tasks learned through a shared
width-N linear bottleneck, with its exact theory (Thm. 3, Thm. 4, Prop. 6, App. C.4).

It shares nothing with the token stream. Modules: :mod:`~smalllm.toy.theory` (numpy closed forms),
:mod:`~smalllm.toy.model` (the batched torch student), :mod:`~smalllm.toy.experiments` ((a)-(d)),
:mod:`~smalllm.toy.plots` (matplotlib), :mod:`~smalllm.toy.config` and :mod:`~smalllm.toy.run`
(``smalllm toy``). This file stays import-light: the CLI reads :data:`EXPERIMENTS` to build its parser.
See docs/toy.md.
"""

EXPERIMENTS = ("heatmap", "signal", "retention", "rank1")
"""The experiments (a)-(d), in order; ``smalllm toy all`` runs them all."""

CHOICES = (*EXPERIMENTS, "all")
"""What ``smalllm toy`` accepts."""
