"""Research recipes outside the product: the toyworld scenes, the style metrics and the trainer
of the embedded default model. They import ``studio``; ``studio`` never imports them."""
