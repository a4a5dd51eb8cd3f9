"""Managed ComfyUI instances: how they run (process, docker) and how they are healed."""
