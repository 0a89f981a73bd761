"""Training data made the validators' way: SDXL synthetic images (:mod:`.synth`), pseudo-labels from a
profile (:mod:`.pseudo`). The miner's request recorder lives in :mod:`natix_miner.neuron.recorder`.
Everything here writes the layouts :mod:`natix_miner.training.data` reads (docs/data-recipe.md)."""
