"""aknet-jax: Action Keypoint Network (AK-Net) and its TSN/TSM/TDN backbones in JAX/Flax."""

__version__ = "0.1.0"
