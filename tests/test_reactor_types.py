"""bridge/core/reactor_types.py names what the bridge uses of Twisted's reactor as typing Protocols, for mypy.  mypy
cannot check them against Twisted's zope interfaces (no mypy-zope plugin), nor against the global reactor (typed
Any): these tests do, so that a Protocol never names a method, or an argument, the reactor does not have."""

from __future__ import annotations

import inspect

from twisted.internet import interfaces, reactor, task, tcp
from twisted.internet.abstract import FileDescriptor
from twisted.internet.endpoints import TCP4ClientEndpoint

from bridge.core import reactor_types

#: Each Protocol and the interface(s) of Twisted's it stands for.
STANDS_FOR = {
    reactor_types.DelayedCall: (interfaces.IDelayedCall,),
    reactor_types.Clock: (interfaces.IReactorTime,),
    reactor_types.ThreadedClock: (interfaces.IReactorFromThreads,),
    reactor_types.TCPClock: (interfaces.IReactorTCP,),
    reactor_types.FDClock: (interfaces.IReactorFDSet,),
    reactor_types.Listener: (interfaces.IReactorTCP, interfaces.IReactorSSL),
    reactor_types.Transport: (interfaces.ITransport,),
    reactor_types.SystemHandle: (interfaces.ISystemHandle,),
    reactor_types.ClientEndpoint: (interfaces.IStreamClientEndpoint,),
    reactor_types.Reactor: (),
}


def own_methods(protocol: type) -> dict[str, object]:
    return {name: value for name, value in vars(protocol).items()
            if inspect.isfunction(value) and not name.startswith("_")}


def all_members(protocol: type) -> set[str]:
    names: set[str] = set()
    for klass in protocol.__mro__:
        if klass in STANDS_FOR:
            names |= set(own_methods(klass)) | set(vars(klass).get("__annotations__", {}))
    return names


def test_every_protocol_of_the_module_is_checked_here():
    declared = {value for value in vars(reactor_types).values()
                if inspect.isclass(value) and value.__module__ == reactor_types.__name__}
    assert declared == set(STANDS_FOR)


def test_each_method_is_its_interface_s_with_the_same_arguments():
    wrong = []
    for protocol, declared_by in STANDS_FOR.items():
        for name, method in own_methods(protocol).items():
            found = [iface[name] for iface in declared_by if name in iface.names()]
            if not found:
                wrong.append(f"{protocol.__name__}.{name}: in none of {[i.__name__ for i in declared_by]}")
                continue
            info = found[0].getSignatureInfo()
            parameters = inspect.signature(method).parameters.values()
            positional = [p.name for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD][1:]  # less self
            if positional != list(info["positional"]) or \
                    any(p.kind is p.VAR_POSITIONAL for p in parameters) != bool(info["varargs"]):
                wrong.append(f"{protocol.__name__}.{name}{tuple(positional)}: Twisted says {info['positional']}")
    assert wrong == []


def test_the_reactor_and_task_clock_have_what_the_protocols_name():
    call = reactor.callLater(3600, lambda: None)
    clock = task.Clock()
    try:
        missing = [f"reactor.{name}" for name in sorted(all_members(reactor_types.Reactor))
                   if not hasattr(reactor, name)]
        missing += [f"task.Clock.{name}" for name in sorted(all_members(reactor_types.Clock))
                    if not hasattr(clock, name)]
        for delayed in (call, clock.callLater(1, lambda: None)):
            missing += [f"{type(delayed).__name__}.{name}" for name in sorted(all_members(reactor_types.DelayedCall))
                        if not hasattr(delayed, name)]
        missing += [f"FileDescriptor.{name}" for name in sorted(all_members(reactor_types.Transport))
                    if not hasattr(FileDescriptor, name)]
        missing += [f"tcp.Connection.{name}" for name in sorted(all_members(reactor_types.SystemHandle))
                    if not hasattr(tcp.Connection, name)]
        missing += [f"TCP4ClientEndpoint.{name}" for name in sorted(all_members(reactor_types.ClientEndpoint))
                    if not hasattr(TCP4ClientEndpoint, name)]
    finally:
        call.cancel()
    assert missing == []
