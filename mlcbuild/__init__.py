"""mlcbuild: declarative, content-addressed builds of MLC-LLM artifacts."""
__version__ = "0.1.0"
