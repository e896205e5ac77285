"""In-memory omemo.Storage shared by the Python helpers of the tests, the vector generator and the benchmark."""

import copy
from typing import Any, Dict

import omemo


class MemoryStorage(omemo.Storage):
    """In-memory omemo.Storage, as in the python-omemo test suite: writes are immediate, values deep-copied."""

    def __init__(self) -> None:
        super().__init__(True)
        self.data: Dict[str, Any] = {}

    async def _load(self, key: str) -> omemo.Maybe:
        if key in self.data:
            return omemo.Just(copy.deepcopy(self.data[key]))
        return omemo.Nothing()

    async def _store(self, key: str, value: Any) -> None:
        self.data[key] = copy.deepcopy(value)

    async def _delete(self, key: str) -> None:
        self.data.pop(key, None)
