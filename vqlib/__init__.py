"""vqlib: the small, tested library of the book *Discrete Latents*.

Each module is one concept of the book, read top-down. The chapters import it; nothing here
reads command-line arguments, downloads at import time, or picks a device for a module.
"""

from vqlib.core.profile import PROFILES, current_profile, default_device, pick, seed_everything, stamp

__version__ = "0.1.0"
__all__ = ["PROFILES", "current_profile", "default_device", "pick", "seed_everything", "stamp", "__version__"]
