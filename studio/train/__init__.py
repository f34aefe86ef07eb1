"""Training: the LoRA recipe (``recipe.py``) and the components it is built from."""
