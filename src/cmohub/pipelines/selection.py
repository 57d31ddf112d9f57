"""Which records of a kept payload a quarantine replay re-stages, by their locators (pure).

A replay (:mod:`cmohub.pipelines.replay`) re-enters an ingest's own staging code with a
:class:`RecordSelection` of the locators its run quarantined: only those records are staged
again, quarantined again or reported missing. A record is selected by its own locator or by
one that encloses it (its event, its message), as each pipeline's locators nest:

* logistics (:func:`record_and_event`): ``event=3;element=1;report=2`` is selected by itself
  or by ``event=3`` (the whole event was quarantined);
* clinical (:func:`record_and_message`): ``input=1/message=3/ORC=2`` by itself or by
  ``input=1/message=3`` (the whole message), never by the payload ``input=1``.

``file`` or ``document`` select every record of the payload, as an ingest run does
(:data:`ALL_RECORDS`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

#: Quarantine locators that stand for a whole payload (it could not be read at all).
WHOLE_PAYLOAD = frozenset({"file", "document"})


def record_and_event(locator: str) -> Sequence[str]:
    """``event=3;element=1;report=2`` -> itself and ``event=3``."""
    return (locator, locator.split(";", 1)[0])


def record_and_message(locator: str) -> Sequence[str]:
    """``input=1/message=3/ORC=2`` -> itself and ``input=1/message=3`` (not the payload)."""
    parts = locator.split("/")
    return ["/".join(parts[:end]) for end in range(len(parts), 1, -1)] or [locator]


@dataclass
class RecordSelection:
    """The records of one payload (or batch) a replay re-stages; see the module doc.

    Locators that no record answered are :meth:`missing` (the reader no longer finds them).
    """

    locators: frozenset[str]
    enclosing: Callable[[str], Sequence[str]] = record_and_event
    found: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._under = frozenset(a for loc in self.locators for a in self.enclosing(loc))

    @classmethod
    def of(
        cls, locators: Iterable[str], enclosing: Callable[[str], Sequence[str]] = record_and_event
    ) -> RecordSelection:
        return cls(frozenset(locators), enclosing)

    @property
    def whole(self) -> bool:
        """Every record of the payload (what an ingest run stages)."""
        return not self.locators.isdisjoint(WHOLE_PAYLOAD)

    def has(self, locator: str) -> bool:
        """Whether a selected record is at or under ``locator`` (an event, a message)."""
        return self.whole or locator in self._under

    def take(self, locator: str) -> bool:
        """Whether the record at ``locator`` is selected (remembered as found when it is)."""
        if self.whole:
            return True
        for candidate in self.enclosing(locator):
            if candidate in self.locators:
                self.found.add(candidate)
                return True
        return False

    def take_whole(self, locator: str) -> int:
        """:meth:`take` for a unit rejected or suppressed whole (a message): it answers for
        each selected record at or under it; how many."""
        answered = {x for x in self.locators if locator in self.enclosing(x)}
        self.found.update(answered)
        return len(answered)

    def unreadable(self, whole_locator: str | None) -> list[str]:
        """Where to quarantine records of a payload that cannot be read any more: the payload
        (``whole_locator``; None when another feed counts it) or each selected record."""
        if self.whole:
            return [whole_locator] if whole_locator else []
        self.found.update(self.locators)
        return sorted(self.locators)

    def missing(self) -> list[str]:
        """Selected locators the payload did not answer."""
        return [] if self.whole else sorted(self.locators - self.found)


#: What an ingest run stages: everything (never remembers what it found).
ALL_RECORDS = RecordSelection(frozenset({"file"}))
