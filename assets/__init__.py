"""The embedded models, installed as the package ``studio_assets`` (see pyproject.toml)."""
