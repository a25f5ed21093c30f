"""How a chunk's rows are encoded for the wire, and how what its tasks printed is shown here."""
from __future__ import annotations

import itertools
import marshal
import sys
from typing import Any

from .chunk import Chunk
from .config import NAME_PREFIX
from .replies import marshal_plain, pack
from .wire import is_plain, plain_rows

SCALARS = frozenset({int, float, str, bool, type(None), complex})  # wire.is_plain's scalars


def packing(chunk: Chunk) -> str | None:
    """How a chunk's rows travel with marshal: "plain" (marshal.dumps), "sets" (``replies.pack``,
    sets and frozensets arrive as such), or None: with serpent.

    marshal turns anything with a buffer (a numpy value) into bytes, so only exact builtin types pass.
    """
    if chunk.kwargs is not None and not (is_plain(chunk.kwargs) or marshal_plain([chunk.kwargs])):
        return None
    if chunk.flat:
        if set(map(type, chunk.args)) <= SCALARS or is_plain(chunk.args):
            return "plain"
    elif set(map(type, itertools.chain.from_iterable(chunk.args))) <= SCALARS or plain_rows(chunk.args):
        return "plain"
    return "sets" if marshal_plain(chunk.args) else None


def encode_rows(rows: list[tuple[Any, ...]], packed: str | None) -> Any:
    """A chunk's rows as sent: as they are (serpent) or marshal bytes of the given ``packing``."""
    if packed is None:
        return rows
    return marshal.dumps(rows) if packed == "plain" else pack(rows)


def show_output(worker: str, output: Any) -> None:
    """Print what a batch's tasks printed, each line prefixed by the worker that ran them."""
    if not isinstance(output, list):
        return
    prefix = "[" + worker.removeprefix(NAME_PREFIX) + "] "
    pending = {"stdout": "", "stderr": ""}
    for entry in output:
        if isinstance(entry, list) and len(entry) == 2 and entry[0] in pending and isinstance(entry[1], str):
            pending[entry[0]] += entry[1]
    for label, text in pending.items():
        if text:
            stream = sys.stdout if label == "stdout" else sys.stderr
            lines = text.splitlines()
            stream.write("".join(f"{prefix}{line}\n" for line in lines))
            stream.flush()
