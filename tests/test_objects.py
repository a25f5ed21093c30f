"""Objects of the script's classes as results: which qualify, how they travel, and what a client refuses."""
from __future__ import annotations

import dataclasses
import sys
from typing import Any, Iterator

import pytest

from pyro_compute.objects import STATE, as_state, qualifies, rebuild
from pyro_compute.references import SCRIPT_MODULE
from pyro_compute.replies import pack_plain


class Plain:
    def __init__(self, x: Any) -> None:
        self.x = x

    class Inner:
        pass


class Child(Plain):
    pass


@dataclasses.dataclass(frozen=True)
class Frozen:
    a: int
    b: list[int]


class Slotted:
    __slots__ = ("x",)


class Reducing:
    def __reduce__(self) -> Any:
        return (print, ("ran",))


class Stateful:
    def __setstate__(self, state: Any) -> None:
        self.__dict__.update(state)


class Mixed(dict):  # type: ignore[type-arg]
    pass


@pytest.fixture(autouse=True)
def as_script(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This module plays the script: its classes look like the launcher's script module's."""
    module = sys.modules[__name__]
    monkeypatch.setitem(sys.modules, SCRIPT_MODULE, module)
    for cls in (Plain, Plain.Inner, Child, Frozen, Slotted, Reducing, Stateful, Mixed):
        monkeypatch.setattr(cls, "__module__", SCRIPT_MODULE)
    yield


def test_plain_classes_qualify_and_others_do_not() -> None:
    assert all(qualifies(c) for c in (Plain, Plain.Inner, Child, Frozen))
    assert not any(qualifies(c) for c in (Slotted, Reducing, Stateful, Mixed, dict, dataclasses.Field))


def test_objects_travel_as_plain_state_and_come_back() -> None:
    values = [Plain(1), {"k": [Child(Plain.Inner())]}, (Frozen(1, [2]), 3), 4]
    sent, found = as_state(values)
    assert found and pack_plain(sent) is not None  # plain data only on the wire
    assert sent[0] == {STATE: ["Plain", {"x": 1}]}
    back = rebuild(sent)
    assert type(back[0]) is Plain and back[0].x == 1
    assert type(back[1]["k"][0]) is Child and type(back[1]["k"][0].x) is Plain.Inner
    assert back[2][0] == Frozen(1, [2]) and back[2][1] == 3 and back[3] == 4


def test_plain_values_are_left_alone() -> None:
    values = [1, [2.0, "x"], {"a": (3,)}]
    assert as_state(values) == (values, False)


def test_objects_that_are_more_than_their_dict_stay_objects() -> None:
    sent, found = as_state([Slotted(), Reducing(), Stateful(), Mixed(a=1)])
    assert not found and pack_plain(sent) is None  # the wire then refuses them, saying why


@pytest.mark.parametrize("entry", [
    ["os.system", {}], ["Slotted", {}], ["Reducing", {}], ["Mixed", {}], ["sys", {}], ["Plain.__class__", {}],
    ["__builtins__.object", {}], ["Missing", {}], ["Plain", {1: 2}], ["Plain", []], ["Plain"], "Plain",
    ["pytest.MonkeyPatch", {}], ["dataclasses.Field", {}],
])
def test_a_client_rebuilds_nothing_but_its_own_plain_classes(entry: Any) -> None:
    """What a worker says is an object is built only from a plain class of the client's script."""
    with pytest.raises(TypeError):
        rebuild([{STATE: entry}])
