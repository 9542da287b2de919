"""accessd: a real-time face-verification access-control daemon."""

__version__ = "0.1.0"
