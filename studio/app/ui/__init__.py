"""Gradio tabs: thin layers that turn widget values into calls on ``studio.app`` services."""
