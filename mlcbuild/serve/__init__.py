"""`mlcbuild serve`: the OpenAI-compatible HTTP layer over `mlcbuild.runtime.LLMEngine` (nothing else)."""
from mlcbuild.serve.app import create_app, listen, serve

__all__ = ["create_app", "listen", "serve"]
