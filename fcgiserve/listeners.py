"""Listening sockets: TCP host:port, a unix socket path, an inherited fd, and the re-exec hand-off.

Order of precedence in ``open_listeners``: sockets handed over by a re-exec of this server
(``FCGISERVE_LISTEN_FDS``), then what the configuration names (``--socket``, ``--fd``, ``--host/--port``).
Only when none of those was given explicitly: systemd socket activation (``LISTEN_FDS`` for our pid, fds
from 3), then fd 0 if the web server spawned us with a listening socket there (FCGI_LISTENSOCK_FILENO,
checklist S-A1/S-A2); otherwise TCP on the default host and port.

Also here: ``AllowList`` (FCGI_WEB_SERVER_ADDRS and --allow-from, S-A3) and small socket helpers.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
import stat
from collections.abc import Iterable, MutableMapping, Sequence
from dataclasses import dataclass, field

from .config import Config, ConfigError

__all__ = [
    "LISTEN_FDS_ENV",
    "OWNED_FDS_ENV",
    "AllowList",
    "Listener",
    "ListenerError",
    "export_for_reexec",
    "is_loopback_address",
    "is_loopback_bind",
    "open_listeners",
    "set_nodelay",
]

LISTEN_FDS_ENV = "FCGISERVE_LISTEN_FDS"  # "3,4": listening fds handed to a re-executed server
OWNED_FDS_ENV = "FCGISERVE_OWNED_FDS"  # the subset whose unix socket file the server created (and unlinks)
FCGI_LISTENSOCK_FILENO = 0
SD_LISTEN_FDS_START = 3  # sd_listen_fds(3): systemd passes activated sockets from fd 3 on
_STALE_PROBE_TIMEOUT = 1.0
_DEFER_ACCEPT_SECONDS = 5

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ListenerError(Exception):
    """A socket could not be opened or adopted; the message is one line naming the address."""


@dataclass(eq=False)
class Listener:
    """A listening socket and how to describe it in logs ("tcp 127.0.0.1:8080", "unix /run/app.sock").

    ``path`` is set when this server created the unix socket file: ``close(unlink=True)`` removes it, but only
    in the process that opened it (not in a forked prefork child) and only while the path still refers to our
    socket (a newer server may have replaced it).
    """

    sock: socket.socket
    description: str
    path: str | None = None
    inode: tuple[int, int] | None = None  # (st_dev, st_ino) of the socket file we created
    owner_pid: int = field(default_factory=os.getpid)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self, unlink: bool = True) -> None:
        """Close the socket; on final shutdown (not on re-exec) also remove our unix socket file."""
        if unlink and self.path is not None and self.inode is not None and os.getpid() == self.owner_pid:
            try:
                st = os.stat(self.path)
                if (st.st_dev, st.st_ino) == self.inode and stat.S_ISSOCK(st.st_mode):
                    os.unlink(self.path)
            except OSError:
                pass  # already gone, or not ours to remove: either way nothing to clean up
        self.sock.close()


def open_listeners(config: Config, environ: MutableMapping[str, str] | None = None) -> list[Listener]:
    """Open (or adopt) the listening sockets ``config`` asks for. Raises ListenerError.

    ``environ`` defaults to ``os.environ``; the re-exec variables are removed from it so that processes the
    application starts do not inherit them.
    """
    env = os.environ if environ is None else environ
    handed_over = env.pop(LISTEN_FDS_ENV, None)
    owned = env.pop(OWNED_FDS_ENV, "")
    if handed_over is not None:
        return _adopt_handed_over(handed_over, owned)
    kind = config.listen_kind()
    if kind == "unix":
        assert config.socket is not None
        return [_open_unix(config.socket, config.socket_mode, config.backlog)]
    if kind == "fd":
        assert config.fd is not None
        return [_adopt(config.fd, f"inherited fd {config.fd}")]
    activated = _systemd_fds(env)
    if kind == "default" and activated:
        return [_adopt(fd, f"systemd socket activation, fd {fd}") for fd in activated]
    if kind == "default" and _is_listening_socket(FCGI_LISTENSOCK_FILENO):
        return [_adopt(FCGI_LISTENSOCK_FILENO, "inherited fd 0 (FCGI_LISTENSOCK_FILENO)")]
    return [_open_tcp(config.host, config.port, config.backlog)]


def _systemd_fds(env: MutableMapping[str, str]) -> list[int]:
    """The fds systemd activated for this process; the variables are removed, as sd_listen_fds(1) does."""
    pid, count = env.pop("LISTEN_PID", ""), env.pop("LISTEN_FDS", "")
    env.pop("LISTEN_FDNAMES", None)
    if pid != str(os.getpid()) or not count.isdigit():
        return []  # meant for another process (a parent that did not unset them), or malformed
    return list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count)))


def export_for_reexec(listeners: Sequence[Listener]) -> dict[str, str]:
    """Make the sockets inheritable and return the environment the re-executed server needs to adopt them.

    The caller must not ``close()`` the listeners before ``exec`` (and must use ``unlink=False`` if it does).
    """
    for listener in listeners:
        listener.sock.set_inheritable(True)
    fds = ",".join(str(listener.fileno()) for listener in listeners)
    owned = ",".join(str(listener.fileno()) for listener in listeners if listener.path is not None)
    return {LISTEN_FDS_ENV: fds, OWNED_FDS_ENV: owned}


def _adopt_handed_over(value: str, owned: str) -> list[Listener]:
    try:
        fds = [int(word) for word in value.split(",") if word.strip()]
        owned_fds = {int(word) for word in owned.split(",") if word.strip()}
    except ValueError:
        raise ListenerError(f"{LISTEN_FDS_ENV}={value!r} is not a comma-separated list of fds") from None
    if not fds:
        raise ListenerError(f"{LISTEN_FDS_ENV} is set but names no fd")
    listeners = [_adopt(fd, f"inherited fd {fd}") for fd in fds]
    for listener in listeners:
        name = listener.sock.getsockname()
        if (
            listener.fileno() in owned_fds
            and listener.sock.family == socket.AF_UNIX
            and isinstance(name, str)
        ):
            try:
                st = os.stat(name)
            except OSError:
                continue  # the file is gone: nothing of ours to unlink at shutdown
            listener.path, listener.inode = name, (st.st_dev, st.st_ino)
    return listeners


def _is_listening_socket(fd: int) -> bool:
    """S-A2: true for a listening socket; false for a tty, pipe, file, closed fd or connected socket."""
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            return False
    except OSError:
        return False
    probe = socket.socket(fileno=os.dup(fd))  # a dup, so probing never closes the real fd
    try:
        if hasattr(socket, "SO_ACCEPTCONN"):
            return bool(probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
        try:  # pragma: no cover - platforms without SO_ACCEPTCONN: the spec's own test
            probe.getpeername()
        except OSError as exc:
            return exc.errno == errno.ENOTCONN
        return False
    except OSError:
        return False
    finally:
        probe.close()


def _adopt(fd: int, origin: str) -> Listener:
    if not _is_listening_socket(fd):
        raise ListenerError(f"{origin} is not a listening socket")
    sock = socket.socket(fileno=fd)
    sock.set_inheritable(False)
    return Listener(sock, f"{_describe(sock)} ({origin})")


def _describe(sock: socket.socket) -> str:
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix {name!r}" if not isinstance(name, str) else f"unix {name or '(unnamed)'}"
    host, port = name[0], name[1]
    return f"tcp [{host}]:{port}" if sock.family == socket.AF_INET6 else f"tcp {host}:{port}"


def _open_tcp(host: str, port: int, backlog: int) -> Listener:
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise ListenerError(f"cannot listen on tcp {where}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    try:
        # Rebind while old connections sit in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
        if hasattr(socket, "TCP_DEFER_ACCEPT"):
            # Linux: accept() returns a connection only once it has data (or after a few seconds), so a
            # peer that connects and says nothing does not occupy a worker (or a whole prefork child).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, _DEFER_ACCEPT_SECONDS)
    except OSError as exc:
        sock.close()
        raise ListenerError(f"cannot listen on tcp {where}: {exc.strerror or exc}") from None
    return Listener(sock, _describe(sock))


def _open_unix(path: str, mode: int, backlog: int) -> Listener:
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # bind() creates the file with 0777 & ~umask. Under umask 0777 it starts as mode 000 and only then gets
    # its real mode: the file is never more open than asked for, not even for a moment. (The umask is
    # process-wide; this runs at start-up, before any thread that creates files.)
    old_umask = os.umask(0o777)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise ListenerError(f"cannot listen on unix {path}: {exc.strerror or exc}") from None
    finally:
        os.umask(old_umask)
    try:
        os.chmod(path, mode)
        st = os.stat(path)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise ListenerError(f"cannot listen on unix {path}: {exc.strerror or exc}") from None
    return Listener(sock, f"unix {path}", path=path, inode=(st.st_dev, st.st_ino))


def _remove_stale_socket(path: str) -> None:
    """Unlink ``path`` only if it is a socket nobody accepts on; anything else there is an error."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ListenerError(f"cannot listen on unix {path}: {exc.strerror}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise ListenerError(
            f"cannot listen on unix {path}: the path exists and is not a socket (not removed)"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(_STALE_PROBE_TIMEOUT)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        pass  # a socket file left behind by a server that died: nobody is listening
    except OSError as exc:
        raise ListenerError(
            f"cannot listen on unix {path}: probing the existing socket failed: {exc}"
        ) from None
    else:
        raise ListenerError(f"cannot listen on unix {path}: another server is accepting connections on it")
    finally:
        probe.close()
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ListenerError(f"cannot remove the stale unix socket {path}: {exc.strerror}") from None


def set_nodelay(sock: socket.socket) -> None:
    """Disable Nagle on an accepted TCP socket (responses leave in one write; no 40 ms delayed-ACK stall)."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # the peer already reset the connection; the first read will say so


def is_loopback_bind(listener: Listener) -> bool:
    """True when only this machine can connect: a unix socket or a loopback TCP address.

    The caller warns loudly when this is False and no allow-list is set: FastCGI has no authentication.
    """
    if listener.sock.family not in (socket.AF_INET, socket.AF_INET6):
        return True
    return is_loopback_address(str(listener.sock.getsockname()[0]))


def is_loopback_address(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and their IPv4-mapped forms; False for wildcards and other addresses."""
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


class AllowList:
    """Which peers may connect (checklist S-A3): FCGI_WEB_SERVER_ADDRS and --allow-from, combined.

    Empty means everyone may connect. TCP peers are matched by address (IPv4-mapped IPv6 peers match IPv4
    entries). Peers on a unix socket have no address: they are allowed, unless FCGI_WEB_SERVER_ADDRS is set,
    since the spec says a web server that sets it wants every non-TCP connection refused.
    """

    __slots__ = ("_networks", "refuse_non_tcp")

    def __init__(self, networks: Iterable[str] = (), *, refuse_non_tcp: bool = False) -> None:
        self._networks: tuple[IPNetwork, ...] = tuple(_network(n) for n in networks)
        self.refuse_non_tcp = refuse_non_tcp

    @classmethod
    def from_config(cls, config: Config, environ: MutableMapping[str, str] | None = None) -> AllowList:
        """--allow-from plus FCGI_WEB_SERVER_ADDRS from ``environ`` (default ``os.environ``)."""
        env = os.environ if environ is None else environ
        from_env = [w.strip() for w in env.get("FCGI_WEB_SERVER_ADDRS", "").split(",") if w.strip()]
        for word in from_env:
            try:
                _network(word)
            except ValueError:
                raise ConfigError(
                    f"FCGI_WEB_SERVER_ADDRS: {word!r} is not an IP address or network"
                ) from None
        return cls([*config.allow_from, *from_env], refuse_non_tcp=bool(from_env))

    @property
    def active(self) -> bool:
        """False when every peer is allowed (no list configured)."""
        return bool(self._networks) or self.refuse_non_tcp

    def allowed(self, peer: object) -> bool:
        """``peer`` is the address ``accept()`` returned: (host, port, ...) for TCP, a str/bytes for unix."""
        if not isinstance(peer, tuple):
            return not self.refuse_non_tcp
        if not self._networks:
            return True
        try:
            address = ipaddress.ip_address(str(peer[0]).partition("%")[0])
        except (ValueError, IndexError):
            return False
        candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [address]
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            candidates.append(address.ipv4_mapped)
        return any(a in net for a in candidates for net in self._networks if a.version == net.version)

    def __repr__(self) -> str:
        nets = ", ".join(str(n) for n in self._networks)
        return f"AllowList([{nets}], refuse_non_tcp={self.refuse_non_tcp})"


def _network(text: str) -> IPNetwork:
    network = ipaddress.ip_network(text.strip(), strict=False)
    if isinstance(network, ipaddress.IPv6Network) and network.network_address.ipv4_mapped is not None:
        # "::ffff:10.0.0.0/104" written in IPv6 form: match it as the IPv4 network it means
        mapped = network.network_address.ipv4_mapped
        return ipaddress.ip_network(f"{mapped}/{max(network.prefixlen - 96, 0)}", strict=False)
    return network
