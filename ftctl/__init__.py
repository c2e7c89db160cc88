"""ftctl: turn production chat feedback into better local LLMs, safely and repeatably."""

__version__ = "0.1.0"
