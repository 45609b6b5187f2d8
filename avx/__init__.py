"""avx: audio-visual emotion recognition research toolkit.

Two phases: ``avx extract`` turns a corpus into a chunked Zarr feature store once;
``avx fuse`` trains and evaluates fusion methods from that store many times.

The Python API mirrors the CLI; the entry point for reading is :func:`open_store`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("avx")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

from typing import TYPE_CHECKING, Any

from avx.errors import AvxError

if TYPE_CHECKING:
    from avx.store_schema import FeatureStore, open_store

__all__ = ["AvxError", "FeatureStore", "__version__", "open_store"]


def __getattr__(name: str) -> Any:
    # Lazy: ``avx --help`` should not pay for importing pandas and zarr.
    if name in ("FeatureStore", "open_store"):
        import avx.store_schema as store_schema

        return getattr(store_schema, name)
    raise AttributeError(f"module 'avx' has no attribute {name!r}")
