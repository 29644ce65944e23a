"""sd-serving: Stable Diffusion text-to-image serving on Ray Serve, behind KServe."""

__version__ = "0.1.0"
