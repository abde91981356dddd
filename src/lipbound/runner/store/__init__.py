"""Result stores: where records go as each input finishes (:mod:`lipbound.runner.store.jsonl`)."""

from lipbound.runner.store.jsonl import JsonlStore, keyed_path

__all__ = ["JsonlStore", "keyed_path"]
