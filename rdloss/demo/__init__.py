"""The ``rdloss`` command's experiments: embedded data, reference models, toy and sweep.

Not part of the core API: the modules here use only rdloss's public API, the way a user
would, to reproduce Alemi et al. (2018), "Fixing a Broken ELBO".

* `rdloss.demo.data`: the exact toy distribution and the embedded 8x8 digits.
* `rdloss.demo.models`: MLP encoder, factorised and MADE Bernoulli decoders.
* `rdloss.demo.toy`, `rdloss.demo.sweep`: the two experiments.
* `rdloss.demo.results`, `rdloss.demo.figures`: tables, files and plots.
"""

__all__: list[str] = []
