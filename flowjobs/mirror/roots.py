"""Finding each mirrored job's flow root."""

from __future__ import annotations

import redis

from ..models import JobRecord
from .upsert import DB_CHUNK


class RootResolver:
    """Finds each job's flow root, from the batch, then the mirror, then Redis."""

    _MAX_DEPTH = 64
    _CACHE_LIMIT = 100_000

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.root_cache: dict[str, str] = {}

    def resolve(self, parent_of: dict[str, str]) -> dict[str, str]:
        """Root key of every key in ``parent_of`` (key -> parent key or "")."""
        if len(self.root_cache) > self._CACHE_LIMIT:
            self.root_cache.clear()
        parents = dict(parent_of)
        roots: dict[str, str] = {}

        def walk(key: str) -> str | None:
            path = []
            current = key
            for _ in range(self._MAX_DEPTH):
                if current in roots:
                    found = roots[current]
                    break
                if current in self.root_cache:
                    found = self.root_cache[current]
                    break
                parent = parents.get(current)
                if parent is None:
                    return None  # not known yet
                path.append(current)
                if not parent:
                    found = current
                    break
                current = parent
            else:
                found = current
            for step in path:
                roots[step] = found
            return found

        for _round in range(self._MAX_DEPTH):
            unknown = {k for k in parent_of if walk(k) is None}
            if not unknown:
                break
            frontier = set()
            for key in unknown:
                current = key
                while parents.get(current):
                    current = parents[current]
                frontier.add(current)
            frontier -= set(roots) | set(self.root_cache)
            self._load_from_mirror(frontier, parents)
            missing = [k for k in frontier if k not in parents and k not in self.root_cache]
            if missing:
                pipe = self.client.pipeline(transaction=False)
                for key in missing:
                    pipe.hget(key, "parentKey")
                for key, parent in zip(missing, pipe.execute(), strict=True):
                    # A parent Redis no longer has is the topmost ancestor we can know.
                    parents[key] = parent or ""
        result = {}
        for key in parent_of:
            root = walk(key) or key
            result[key] = root
            self.root_cache[key] = root
        return result

    def _load_from_mirror(self, keys: set[str], parents: dict[str, str]) -> None:
        pending = list(keys)
        for start in range(0, len(pending), DB_CHUNK):
            chunk = pending[start : start + DB_CHUNK]
            rows = JobRecord.objects.filter(key__in=chunk).values_list(
                "key", "parent_key", "root_key"
            )
            for key, parent_key, root_key in rows:
                if root_key:
                    self.root_cache[key] = root_key
                else:
                    parents[key] = parent_key
