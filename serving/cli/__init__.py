"""The `sd-serving` commands: serve, generate, gateway, plan, export-model."""
