"""One call to a worker: send a chunk, settle its future, and judge a failed call.

Methods of ``Scheduler`` (assigned in its class body), kept here so each module has one job.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, cast

import Pyro4
import Pyro4.errors

from . import objects
from .chunk import Chunk, with_remote_cause
from .dashboard_state import RunReporter
from .links import ANSWERS, Call, Dispatcher, Link, connect, new_proxy, probe
from .references import first_object, object_argument_refusal
from .sending import encode_rows, show_output
from .serializers import loads_plain
from .wire import foreign, from_serpent, is_plain

if TYPE_CHECKING:
    from .scheduler import Scheduler


def call(sched: Scheduler, d: Dispatcher, proxy: Pyro4.Proxy, chunk: Chunk,
         packed: str | None) -> BaseException | None:
    """Run one chunk and settle it; return the communication error if there was one."""
    try:
        args = encode_rows(chunk.args, packed)
        if packed is not None and len(args) > sched.settings.max_message_size:
            raise Pyro4.errors.MessageTooLargeError(sched.too_large(chunk, "its arguments are"))
        booked = d.link.calls[d.slot]
        booked.fresh = proxy._pyroConnection is None and connect(proxy, sched.settings)
        if sched.shared_version and (booked.fresh or d.shared_sent < sched.shared_version):
            sched.push_shared(d, proxy)
        # No lock: give_up_on sets aborted before it reads proxy, we the reverse, so
        # either we see aborted or it sees our proxy and breaks its connection.
        booked.proxy = proxy
        start = time.time() if sched.reporter is not None else 0.0
        if booked.aborted:
            return None  # health gave up on this worker meanwhile; the chunk is requeued
        if packed is None and sched.by_value and foreign(chunk.args):
            import cloudpickle  # only by-value pools need it
            reply = proxy.batch(chunk.task, [], chunk.kwargs, chunk.seeds, chunk.code,
                                cloudpickle.dumps(chunk.rows()), **sched.options())
        else:  # proxy.batch(...) without Pyro4's per-call method object (our proxies never retry)
            reply = proxy._pyroInvoke("batch", (chunk.task, args, chunk.kwargs, chunk.seeds, chunk.code),
                                      sched.flat_options() if chunk.flat else sched.options())
        packed_results = reply.get("packed")
        if packed_results is not None:
            reply["results"] = loads_plain(packed_results)
        elif "serpent" in reply:
            reply["results"] = from_serpent(reply["serpent"])
        if reply.get("objects"):
            reply["results"] = objects.rebuild(reply["results"])
    except (Pyro4.errors.SerializeError, Pyro4.errors.MessageTooLargeError) as e:
        chunk.fail(_object_refused(chunk, e))
    except Pyro4.errors.CommunicationError as e:
        return cast(BaseException, e)
    except Exception as e:  # the Evaluator rejected the whole call: the caller's error
        chunk.fail(_object_refused(chunk, with_remote_cause(e)))
    else:
        if "output" in reply:
            show_output(d.link.name, reply["output"])
        sched.record(chunk.task, reply["seconds"], len(chunk.args))
        if sched.reporter is not None:  # before resolve: a finished map has been reported in full
            sched.report(sched.reporter, d.link.name, chunk, start)
        chunk.resolve(reply["results"], reply["errors"])
    return None


def report(sched: Scheduler, reporter: RunReporter, worker: str, chunk: Chunk, start: float) -> None:
    """Tell the dashboard of a finished call: a task-stream event and tasks done/queued/running."""
    n = len(chunk.args)
    with sched.lock:
        if chunk.future.done():  # a duplicate of a call judged hung: counted once
            return
        sched.reported += n
        done = sched.reported
        queued = sum(len(c.args) for c in sched.pending if not c.future.done())
        running = sum(len(c.chunk.args) for link in sched.links.values() for c in link.calls.values()) - n
    name = chunk.task.split(" ", 1)[0]  # a script function's reference ends in its options
    reporter.task(worker, start, time.time(), name if n == 1 else f"{name} x{n}")
    reporter.progress(done, None, queued=queued, running=max(0, running))


def push_shared(sched: Scheduler, d: Dispatcher, proxy: Pyro4.Proxy) -> None:
    """Send the pool's constants to ``d``'s worker (with serpent if marshal cannot carry them)."""
    with sched.lock:
        version, constants = sched.shared_version, dict(sched.shared)
    if proxy._pyroSerializer == "marshal" and not is_plain(constants):
        with new_proxy(d.link.uri, "serpent", sched.settings, sched.settings.call_timeout) as other:
            other.set_shared(sched.run_id, constants)
    else:
        proxy.set_shared(sched.run_id, constants)
    d.shared_sent = version


def too_large(sched: Scheduler, chunk: Chunk, what: str) -> str:
    """Why a chunk may be too large for the wire, and what to do."""
    return (f"task {chunk.task}: {what} probably larger than the workers' message size limit "
            f"(PYRO_COMPUTE_MAX_MESSAGE_SIZE, {sched.settings.max_message_size} bytes here); "
            "send smaller pieces or raise the limit on both sides")


def judge(sched: Scheduler, link: Link, call: Call, error: BaseException) -> str:
    """Classify a failed call (probing the worker, outside the lock): retry, lost or too large."""
    if isinstance(error, Pyro4.errors.ConnectionClosedError) and probe(link.uri, sched.settings) == ANSWERS:
        # A worker that still answers hung up. On a connection that sat idle it may have
        # closed it as idle: reconnect and retry. A connection made for this very call may
        # have sat idle too (a starved client thread between handshake and request), so that
        # is retried once; a second hang-up means the worker refused the message: over its
        # size limit (ours or the result).
        return "too large" if call.chunk.hangups >= (1 if call.fresh else 2) else "retry"
    return "lost"


def _object_refused(chunk: Chunk, error: BaseException) -> BaseException:
    """A worker's refusal to rebuild an object among the arguments, as a TypeError saying what to do."""
    rows = chunk.rows()
    obj = first_object(rows)
    if obj is None or type(obj).__qualname__ not in str(error):
        return error
    return TypeError(object_argument_refusal(rows))
