"""The store reader as a ``torch.utils.data.IterableDataset``; the only shards module that imports torch.

``import shards`` never loads this module: import it where a DataLoader is built.
"""

from __future__ import annotations

from typing import Any, Iterator

from torch.utils.data import IterableDataset

from shards.manifest import Manifest
from shards.reader import StoreReader


class StoreDataset(IterableDataset):
    """Wraps a :class:`StoreReader` for ``torch.utils.data.DataLoader`` (workers split shards themselves).

    Each epoch's ``iter(loader)`` sends the reader, with its current epoch, to fresh workers; with
    ``persistent_workers=True`` the workers keep the copy they got first, so ``set_epoch`` would not reach
    them: use non-persistent workers (the default) or ``resampled=True``.

    Args:
        reader: the configured reader; it is pickled into workers without open files.
    """

    def __init__(self, reader: StoreReader) -> None:
        super().__init__()
        self.reader = reader

    @property
    def manifest(self) -> Manifest:
        return self.reader.manifest

    def set_epoch(self, epoch: int) -> None:
        """Reseed the reader's shuffling; call it before each epoch's ``iter(loader)``."""
        self.reader.set_epoch(epoch)

    def state_dict(self) -> dict[str, int]:
        """The reader's position in this process (see :meth:`StoreReader.state_dict`): with torchdata's
        ``StatefulDataLoader`` each worker's position is saved, and restored into that worker on resume."""
        return self.reader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reader.load_state_dict(state)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.reader)
