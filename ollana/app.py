"""The composition root: detect the role, open what the node needs, run it until shutdown."""

from __future__ import annotations

import asyncio
import resource
import secrets
import socket
import time
from collections.abc import Callable
from contextlib import AsyncExitStack

import aiohttp
import structlog

from ollana.config import Config, Endpoint, Mode, Role, Trust
from ollana.errors import PortBusy, StartupError
from ollana.observe.upstream import connection_traces
from ollana.portholder import busy_message, who_holds
from ollana.proxy.headers import OWN_REQUEST, is_from_ollana
from ollana.roles.both import run_both
from ollana.roles.client import ClientNode
from ollana.roles.server import ServerNode
from ollana.runtime import Node, Ready, Runtime, upstream_session
from ollana.service.ctlsock import presence
from ollana.service.record import NO_FILES, NodeFiles
from ollana.state import load_node_id
from ollana.trust.devices import DeviceTrust

log = structlog.get_logger(__name__)


async def local_ollama_version(session: aiohttp.ClientSession, base_url: str, timeout: float) -> str | None:
    """The version of the Ollama at ``base_url``, or None when nothing Ollama-like answers.

    Asks the API only; an ollana (marked by its Via header) is never taken for an Ollama, so a
    client proxy on 127.0.0.1:11434 does not make its own machine look like a server.
    """
    try:
        async with session.get(
            base_url + "/api/version", timeout=aiohttp.ClientTimeout(total=timeout), headers=OWN_REQUEST
        ) as resp:
            if resp.status != 200 or is_from_ollana(resp.headers):
                return None
            body = await resp.json(content_type=None)
    except (TimeoutError, aiohttp.ClientError, ValueError, OSError):
        return None
    if isinstance(body, dict) and isinstance(body.get("version"), str):
        return str(body["version"])
    return None


async def detect_role(config: Config, session: aiohttp.ClientSession) -> Role:
    if config.mode is Mode.SERVER:
        return Role.SERVER
    if config.mode is Mode.CLIENT:
        return Role.CLIENT
    if config.mode is Mode.BOTH:
        return Role.BOTH
    version = await local_ollama_version(session, config.ollama_url, config.timings.detect_timeout)
    if version is None:
        role = Role.CLIENT
    else:
        # An Ollama on another port leaves 127.0.0.1:11434 to us: its apps can then use the fleet.
        role = Role.BOTH if address_free(config.listen_for(Role.CLIENT)) else Role.SERVER
    log.info("role_detected", role=role.value, ollama=config.ollama_url, ollama_version=version)
    return role


def address_free(endpoint: Endpoint) -> bool:
    """Whether a TCP listener could bind ``endpoint`` now (nothing else listens there)."""
    family = socket.AF_INET6 if ":" in endpoint.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((endpoint.host, endpoint.port))
        except OSError:
            return False
    return True


def raise_fd_limit() -> None:
    """Raise the descriptor soft limit to the hard one: every connection costs one (two when
    proxied), and the listeners' caps are sized from it (``connlimits.effective_total``)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == hard:
        log.debug("fd_limit", soft=soft, hard=hard, raised=False)
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError) as exc:
        log.debug("fd_limit", soft=soft, hard=hard, raised=False, error=str(exc))
        return
    log.debug("fd_limit", soft=hard, hard=hard, was=soft, raised=True)


async def run(
    config: Config,
    shutdown: asyncio.Event,
    ready: Callable[[Ready], None] = lambda _r: None,
    clock: Callable[[], float] = time.monotonic,
    reload: asyncio.Event | None = None,
    files: NodeFiles = NO_FILES,
) -> None:
    """Run one node until ``shutdown`` is set; setting ``reload`` (SIGHUP) re-reads the allow list
    at once instead of at the next poll. ``files``: its pid and log file, named in its runtime
    record. Raises StartupError if it cannot start, ConfigError if its state (identity, trust
    store) is unusable."""
    raise_fd_limit()
    hostname = Node.local_hostname()
    node_id = load_node_id(config.state_dir)
    devices = DeviceTrust.load(config.state_dir, hostname) if config.trust is Trust.DEVICES else None
    if devices is None:
        log.warning(
            "trust_open",
            warning="TRUST MODE OPEN: plain HTTP, no device checks; anyone on this network can use "
            "the servers, read every prompt and answer, or pose as a server. Use it only on a network "
            "you trust; the default, --trust devices, pairs devices and encrypts traffic",
        )
    async with AsyncExitStack() as stack:
        session = await stack.enter_async_context(
            upstream_session(config.timings.connect_timeout, connection_traces()))
        # service/: the control socket for `ollana device/peer`, and the runtime record (written
        # once the node serves, removed on exit) by which CLI commands find this node.
        ready = await stack.enter_async_context(presence(config, files, ready))
        role = await detect_role(config, session)
        node = Node(
            node_id=node_id,
            instance_id=secrets.token_bytes(8),
            hostname=hostname,
            started=clock(),
        )
        rt = Runtime(config=config, node=node, session=session, clock=clock, devices=devices,
                     reload=reload or asyncio.Event())
        try:
            if role is Role.BOTH:
                await run_both(rt, shutdown, ready)
                return
            runner = ServerNode(rt) if role is Role.SERVER else ClientNode(rt)
            await runner.run(shutdown, ready)
        except PortBusy as exc:
            # Blame what really holds the address: ask it, briefly, before saying who.
            holder = await who_holds(session, exc.endpoint, config.timings.detect_timeout)
            client_side = role is Role.CLIENT or (role is Role.BOTH and exc.endpoint == config.listen_for(Role.CLIENT))
            side = Role.CLIENT if client_side else Role.SERVER
            raise StartupError(busy_message(exc.endpoint, holder, side)) from exc
