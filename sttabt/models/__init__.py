"""Model definitions registered with timm (import registers them)."""
from .lvvit import *  # noqa: F401,F403
from .lvvit import __all__  # noqa: F401
