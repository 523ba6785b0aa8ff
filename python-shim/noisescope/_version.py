"""The hook's version, sent in Hello.hook_version."""
__version__ = "0.1.0"
