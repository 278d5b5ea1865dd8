"""The training store: schema, codecs, column writer, manifest and joined streaming reader.

Imports neither torch nor ray; every other package depends on this one, and it on none of them.
"""

from shards.schema import COLUMNS, DEFAULT_SHARD_SIZE, DEFAULT_STORE_SIZE, column, key_of, shard_name

__all__ = ["COLUMNS", "DEFAULT_SHARD_SIZE", "DEFAULT_STORE_SIZE", "column", "key_of", "shard_name"]
