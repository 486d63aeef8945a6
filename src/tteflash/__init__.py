"""TTE-Flash: reasoning-aware universal multimodal embeddings with latent think tokens."""
from .config import TTEFlashConfig
from .model import TTEFlashModel
from .processing import InputError

__all__ = ["TTEFlashConfig", "TTEFlashModel", "InputError"]
__version__ = "0.1.0"
