"""A Redis primary and its replicas (all with AOF) watched by three Sentinels, on loopback ports of
their own, for failover tests and benches: SIGKILL (or SIGSTOP) the primary, then wait until the
Sentinels have promoted a replica and every replica left follows it.

Sentinel's clocks are turned down (down after 3 s, failover timeout 3 s) so a failover takes seconds.
A primary that stalls for longer than that is failed over too, whether or not the test meant it, and
what it acknowledged meanwhile is lost with it (replication is asynchronous): `config_epoch` tells a
test how many failovers happened, `state` and `logs` what each node and Sentinel saw.
"""

from __future__ import annotations

import contextlib
import secrets
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import redis as sync_redis
from redis_server import RedisServer, free_port

MASTER = "mcpq-main"
# Not 1 s: a Sentinel pings every second, and its link to a just-promoted primary is new: its first
# PONG had to come within 1 s of the switch, while every process reconnects to that primary. It came
# 1.02 s late once in 8 runs on a loaded box (load 7): the healthy new primary was failed over too, a
# second after the first failover, and what it acknowledged and had not passed on was lost with it
# (most likely why all 20 calls after the first failover were told "job ... was lost" in 1 CI run of 5).
DOWN_AFTER_MS = 3000
FAILOVER_TIMEOUT_MS = 3000
# appendfsync everysec (production's default) and not RedisServer's always: with always, the primary's
# main thread waits for each write's fsync, and one fsync of a second on a busy CI disk is a primary that
# stops answering for longer than DOWN_AFTER_MS: a failover the test did not make, which loses the jobs
# enqueued in that stall (tried by hand, one fdatasync delayed 2.5 s by strace during 20 calls:
# always, a failover in 5 of 5 tries, 12 and 8 calls lost in two; everysec, none; see README)
NODE_ARGS = ("--repl-diskless-sync-delay", "0", "--appendfsync", "everysec")


def wait_until(check: Callable[[], object], timeout: float, what: str) -> object:
    """Poll `check` (errors count as not yet) until it is truthy; RuntimeError naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(sync_redis.RedisError, OSError):
            if value := check():
                return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class SentinelProcess:
    """One `redis-server --sentinel` watching MASTER; its config file is its own (Sentinel rewrites it)."""

    def __init__(self, tmp: Path, primary_port: int):
        self.port = free_port()
        self.id = secrets.token_hex(20)  # Sentinel's run id, given so the others can be told it up front
        self.dir = tmp / f"sentinel-{self.port}"
        self.primary_port = primary_port
        self.known: list[str] = []  # sentinel.conf lines naming the replicas and the other Sentinels
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "sentinel.conf"
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\nlogfile {self.dir / 'sentinel.log'}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {self.primary_port} 2\n"
            f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {MASTER} 1\nsentinel myid {self.id}\n" + "".join(self.known)
        )
        self.proc = subprocess.Popen(
            ["redis-server", str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        pid = wait_until(lambda: self.client().info("server")["process_id"], 10, f"sentinel on {self.port}")
        if pid != self.proc.pid:
            raise RuntimeError(f"port {self.port} is served by another process (pid {pid})")

    def client(self) -> sync_redis.Redis:
        return sync_redis.Redis(port=self.port, socket_timeout=2, decode_responses=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(10)

    def log(self) -> str:
        path = self.dir / "sentinel.log"
        return path.read_text(errors="replace") if path.exists() else ""


class SentinelCluster:
    """`replicas` replicas of one primary, three Sentinels; `url` is what every process is given."""

    def __init__(self, tmp: Path, replicas: int = 1):
        self.tmp = tmp
        # a replica's full sync starts at once, not after diskless sync's default 5 s wait for company
        self.nodes = [self._node(0)]
        primary = ("--replicaof", "127.0.0.1", str(self.nodes[0].port))
        self.nodes += [self._node(n, primary) for n in range(1, replicas + 1)]
        self.sentinels = [SentinelProcess(tmp, self.nodes[0].port) for _ in range(3)]
        self.frozen: list[RedisServer] = []

    def _node(self, n: int, args: tuple[str, ...] = ()) -> RedisServer:
        path = self.tmp / f"redis-{n}"
        path.mkdir(parents=True, exist_ok=True)
        return RedisServer(
            path, persistent=True, args=(*NODE_ARGS, "--logfile", str(path / "redis.log"), *args)
        )

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        self._wait_replicated(self.nodes[0], len(self.nodes) - 1)
        for sentinel in self.sentinels:  # told of each other and the replicas: no seconds of discovery
            sentinel.known = [f"sentinel known-replica {MASTER} 127.0.0.1 {n.port}\n" for n in self.nodes[1:]]
            sentinel.known += [
                f"sentinel known-sentinel {MASTER} 127.0.0.1 {other.port} {other.id}\n"
                for other in self.sentinels
                if other is not sentinel
            ]
            sentinel.start()
        for sentinel in self.sentinels:  # each knows the replicas and the two other Sentinels
            wait_until(lambda s=sentinel: self._sees_all(s), 20, f"sentinel {sentinel.port} to see the set")

    def url(self, *, dead_first: bool = False, master: str = MASTER, userinfo: str = "") -> str:
        """`dead_first`: a Sentinel address nothing listens on comes first, as when one host is down."""
        hosts = [f"127.0.0.1:{s.port}" for s in self.sentinels]
        if dead_first:
            hosts.insert(0, f"127.0.0.1:{free_port()}")
        return f"redis+sentinel://{userinfo}{','.join(hosts)}/{master}/0"

    def primary(self) -> RedisServer:
        """The node the Sentinels name as primary now."""
        sentinel = next(s for s in self.sentinels if s.alive())
        _, port = sentinel.client().sentinel_get_master_addr_by_name(MASTER)
        return next(node for node in self.nodes if node.port == int(port))

    def config_epoch(self) -> int:
        """The epoch of the failover that made the primary what it is (0: none yet); it grows by at least
        one with each failover, so a test can tell one it did not make."""
        sentinel = next(s for s in self.sentinels if s.alive())
        return int(sentinel.client().sentinel_master(MASTER)["config-epoch"])

    def state(self) -> str:
        """One line a node (role, whom it follows, replication offsets) and what each Sentinel names:
        for a failure message. A frozen or dead node is said to be so, not asked."""
        lines = []
        for sentinel in self.sentinels:
            named = "down"
            if sentinel.alive():
                with contextlib.suppress(sync_redis.RedisError, OSError):
                    master = sentinel.client().sentinel_master(MASTER)
                    named = f"names {master['port']} (config epoch {master['config-epoch']}, flags {master['flags']})"
            lines.append(f"sentinel {sentinel.port}: {named}")
        for node in self.nodes:
            if node in self.frozen or node.proc is None or node.proc.poll() is not None:
                lines.append(f"redis {node.port}: {'frozen' if node in self.frozen else 'dead'}")
                continue
            try:
                info = sync_redis.Redis(port=node.port, socket_timeout=2).info("replication")
            except (sync_redis.RedisError, OSError) as e:
                lines.append(f"redis {node.port}: no answer ({type(e).__name__})")
                continue
            follows = (
                f" of {info.get('master_port')} (link {info.get('master_link_status')})"
                if info["role"] == "slave"
                else ""
            )
            lines.append(
                f"redis {node.port}: {info['role']}{follows}, offset {info['master_repl_offset']}, "
                f"replication id {info['master_replid'][:8]}, old primary's valid up to {info['second_repl_offset']}"
            )
        return "\n".join(lines)

    def kill_primary(self) -> RedisServer:
        """SIGKILL the primary (no shutdown, no last write to disk); answers the node killed."""
        node = self.primary()
        assert node.proc is not None
        node.proc.kill()
        node.proc.wait(10)
        return node

    def freeze_primary(self) -> RedisServer:
        """SIGSTOP the primary: it keeps its connections open and answers nothing, as a machine lost or
        cut off does; answers the node frozen."""
        node = self.primary()
        assert node.proc is not None
        node.proc.send_signal(signal.SIGSTOP)
        self.frozen.append(node)
        return node

    def wait_for_failover(self, old: RedisServer, timeout: float = 30) -> RedisServer:
        """Wait until every live Sentinel names a new primary that answers as one, and every live replica
        follows it; answers the new primary."""

        def promoted() -> RedisServer | None:
            named = {
                int(s.client().sentinel_get_master_addr_by_name(MASTER)[1])
                for s in self.sentinels
                if s.alive()
            }
            if len(named) != 1 or old.port in named:
                return None
            node = next(n for n in self.nodes if n.port in named)
            return node if node.client().info("replication")["role"] == "master" else None

        new = wait_until(promoted, timeout, f"a failover away from port {old.port}")
        assert isinstance(new, RedisServer)
        live = [
            n
            for n in self.nodes
            if n is not new and n not in self.frozen and n.proc and n.proc.poll() is None
        ]
        self._wait_replicated(new, len(live), timeout)
        return new

    def _wait_replicated(self, primary: RedisServer, count: int, timeout: float = 20) -> None:
        def synced() -> bool:
            info = primary.client().info("replication")
            states = [info.get(f"slave{i}", {}).get("state") for i in range(info["connected_slaves"])]
            return states.count("online") >= count

        wait_until(synced, timeout, f"{count} replica(s) in sync with port {primary.port}")

    def _sees_all(self, sentinel: SentinelProcess) -> bool:
        state = sentinel.client().sentinel_master(MASTER)
        return state["num-slaves"] == len(self.nodes) - 1 and state["num-other-sentinels"] == 2

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.kill()
        for node in self.frozen:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.kill()  # a stopped process would not act on SIGTERM
        for node in self.nodes:
            node.stop()

    def logs(self) -> str:
        """Each Sentinel's events (its '#' lines: sdown, failovers, switches; not its start-up chatter)
        and each node's log tail (role changes, syncs, slow disk)."""
        parts = []
        for s in self.sentinels:
            events = [line for line in s.log().splitlines() if " # " in line]
            parts.append(f"--- sentinel {s.port} ---\n" + "\n".join(events[-200:]))
        for node in self.nodes:
            log = node.tmp / "redis.log"
            parts.append(
                f"--- redis {node.port} ---\n{log.read_text(errors='replace')[-6000:] if log.exists() else ''}"
            )
        return "\n".join(parts)
