"""callgate: real-time call authorization against pooled minutes and prepaid credits."""

__version__ = "0.1.0"
