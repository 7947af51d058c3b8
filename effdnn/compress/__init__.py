"""Deep-Compression storage: Huffman coding, the container file format, the COMPRESS method."""
from . import deep_compression  # noqa: F401  (registers deep-compression)
from .container import ContainerError, Shared, parse_container, read_container, write_container
from .deep_compression import encode_model, load_compressed

__all__ = ["ContainerError", "Shared", "encode_model", "load_compressed", "parse_container", "read_container",
           "write_container"]
