"""Remote caches: one module per backend (fs: paths and fsspec URLs, s3, http) behind the small
interface in base.py, and RemoteCache (cache.py), the policy over any of them."""
from mlcbuild.store.remote.base import Backend, RemoteUnavailable, open_backend
from mlcbuild.store.remote.cache import RemoteCache

__all__ = ["Backend", "RemoteCache", "RemoteUnavailable", "open_backend"]
