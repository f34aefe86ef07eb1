"""Training: the LoRA recipe (``recipe.py``) in parts (set-up ``run.py``, one step ``step.py``,
per-step ``hooks.py``) and the components they are built from."""
