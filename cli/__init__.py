"""comfyfleet: run ComfyUI on a fleet of GPU machines as one.

This folder is the namespace root (`comfyfleet`) and holds the one command, `comfyfleet`.
"""

__version__ = "0.1.0"
