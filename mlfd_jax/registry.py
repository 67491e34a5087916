"""A tiny name -> factory registry, one per kind of thing (models, datasets, methods, ...).

Configs name things by string; a registry turns the string into a factory and, for a name it
does not know, raises one clear error that lists the valid names.
"""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
  """Maps names to objects (usually factories) of one kind."""

  def __init__(self, kind: str):
    self.kind = kind
    self._items: dict[str, T] = {}

  def register(self, name: str) -> Callable[[T], T]:
    """Decorator: `@MODELS.register('resnet18')`."""

    def deco(obj: T) -> T:
      if name in self._items:
        raise ValueError(f"{self.kind} {name!r} is registered twice")
      self._items[name] = obj
      return obj

    return deco

  def add(self, name: str, obj: T) -> T:
    return self.register(name)(obj)

  def get(self, name: str) -> T:
    try:
      return self._items[name]
    except KeyError:
      raise ValueError(
          f"unknown {self.kind} {name!r}; valid: {', '.join(sorted(self._items))}"
      ) from None

  def __contains__(self, name: str) -> bool:
    return name in self._items

  def names(self) -> list[str]:
    return sorted(self._items)

  def values(self) -> list[T]:
    """The registered objects, in name order."""
    return [self._items[k] for k in sorted(self._items)]
