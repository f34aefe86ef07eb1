"""Training of the embedded default base model (toyworld SD 1.x): VAE first, then UNet + text encoder."""
