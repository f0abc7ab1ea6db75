"""Spec generators for the fuzzer: mutations of the samples and specs built from scratch.

Deterministic for a given seed. Values lean towards what fcgicompose, systemd and nginx treat
specially: quotes, backslashes, %, $, ; { } #, whitespace, Unicode (noncharacters included),
control characters, names that collide after normalisation, ports and paths given twice,
numbers at and beyond their limits, values of the wrong type.

A generated spec is either hostile (anything goes, most are refused) or plausible (only values
a careful user could write, special characters included, so that most are accepted and the
renderers and the real validators get work). Mutated samples are always hostile.
"""

from __future__ import annotations

import copy
import datetime
import random
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tomlkit

PROJECT = Path(__file__).resolve().parent.parent
SEED_FILES = sorted(
    [*(PROJECT / "samples").glob("*.toml"), *(PROJECT / "tests" / "golden_specs").glob("*.toml")]
)

PLAIN = string.ascii_letters + string.digits + "._-/"
SPECIAL = "%$\"'\\ ;{}#\t=@~,+:()[]`!*?&|<>^"
UNICODE = ["é", "ß", "€", "𝄞", "\u00a0", "\u2028", "\u0085", "\U0010fffd", "ı", "İ"]
REFUSED = ["\n", "\r", "\x00", "\x0b", "\x1f", "\x7f", "\ufffe", "\uffff", "\ufdd0", "\U0001ffff"]
TOKENS = ["%i", "%n", "%%", "$$", "${HOME}", "$HOME", "\\n", "\\x41", "\\\\", '\\"', "unix:"]
LOWER = string.ascii_lowercase
SOCKET_CHARS = string.ascii_letters + string.digits + "._@+,=%~-"
URL_CHARS = LOWER + "._~-"


class Gen:
    """Random values for every kind of spec field."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.hostile = True

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def usual(self, p: float) -> bool:
        """Take the plausible branch: with probability p, always when not hostile."""
        return not self.hostile or self.chance(p)

    def odd(self, p: float) -> bool:
        """Take an implausible branch: with probability p, never when not hostile."""
        return self.hostile and self.chance(p)

    def pick(self, *options: Any) -> Any:
        return self.rng.choice(options)

    # -- strings ----------------------------------------------------------------------------

    def text(self, max_len: int = 16, refused: float = 0.03, avoid: str = "") -> str:
        """Free text dense in special characters. Plausible text has no refused characters
        and none of `avoid` (what the field cannot take); hostile text may have anything."""
        out: list[str] = []
        for _ in range(self.rng.randint(0, max_len)):
            roll = self.rng.random()
            if roll < refused and self.hostile:
                piece = self.rng.choice(REFUSED)
            elif roll < 0.45:
                piece = self.rng.choice(PLAIN)
            elif roll < 0.75:
                piece = self.rng.choice(SPECIAL)
            elif roll < 0.88:
                piece = self.rng.choice(TOKENS)
            else:
                piece = self.rng.choice(UNICODE)
            if self.hostile or not any(c in avoid for c in piece):
                out.append(piece)
        return "".join(out)

    def word(self, alphabet: str, low: int = 1, high: int = 10) -> str:
        return "".join(self.rng.choice(alphabet) for _ in range(self.rng.randint(low, high)))

    def path(self, prefix: str = "/srv/", avoid: str = "") -> str:
        """An absolute path; plausible ones are normalized, without surrounding whitespace."""
        if self.odd(0.15):
            return self.pick("/", "relative/path", prefix + "a/../b", prefix + "x" * 256, "")
        if self.chance(0.5):
            parts = [self.word(PLAIN.replace("/", "")) for _ in range(self.rng.randint(1, 3))]
            return prefix + "/".join(parts)
        text = self.text(12, avoid=avoid)
        if not self.hostile:
            parts = [p.strip(" \t") for p in text.split("/")]
            text = "/".join(p for p in parts if p not in ("", ".", "..")).rstrip("\\")
        return prefix + text

    # -- named fields -----------------------------------------------------------------------

    def app_name(self) -> str:
        if self.odd(0.1):
            return self.pick("Rt", "0rt", "a" * 49, "", "a.b", "a b", self.text(8))
        if self.chance(0.65):
            return self.pick("rt", "wiki", "cgit", "echo", "a", "b", "a-b", "a_b", "default")
        return self.word(LOWER, 1, 1) + self.word(LOWER + string.digits + "_-", 0, 47)

    def account(self) -> str:
        if self.usual(0.85):
            return self.pick("www-data", "rt", "wiki", "_app", "a" * 31, "svc-1")
        return self.pick("a" * 32, "Root", "0rt", "a b", "", "nobody", self.text(6))

    def program(self) -> str:
        if self.odd(0.1):
            return self.pick("fcgiwrap", "/usr/bin/spawn-fcgi", "/usr/bin/", "/", "/o/" + "x" * 300)
        if self.chance(0.45):
            return self.pick(
                "/usr/sbin/fcgiwrap",
                "/usr/bin/perl",
                "/usr/bin/python3",
                "/usr/share/request-tracker5/libexec/rt-server.fcgi",
            )
        name = self.text(10, avoid="\"'\\\t/").strip(" \t") or "app"
        return self.pick("/opt/", "/usr/local/bin/", "/srv/app/") + name

    def argv(self) -> list[str]:
        words = [self.program()]
        for _ in range(self.rng.randint(0, 5)):
            if self.odd(0.05):
                words += self.pick(
                    ["--daemon"], ["-s", "unix:/run/x.sock"], ["-b", "/run/x"], ["--fork"]
                )
            else:
                words.append(self.text(14))
        return words

    def socket(self) -> str:
        if self.odd(0.2):
            return self.pick(
                "/tmp/app{worker}.sock",
                "/home/a/{worker}.sock",
                "/run/" + "s" * 100 + "/{worker}.sock",
                "/run/a/{worker}{worker}.sock",
                "/run/a b/{worker}.sock",
                "/run/x/",
                "run/x{worker}",
                self.text(10),
            )
        if self.chance(0.1):
            return "/run/fixed-" + self.word(SOCKET_CHARS, 1, 8) + ".sock"
        middle = self.word(SOCKET_CHARS, 1, 12) + self.pick("/", "-", "")
        middle += self.word(SOCKET_CHARS, 0, 6)
        return "/run/" + middle.replace("/.", "/x.") + "{worker}" + self.pick(".sock", "")

    def host(self) -> str:
        if self.odd(0.15):
            return self.pick("a b", "a;b", "$host", "*.a.*", "-", ".a.org", self.text(8))
        if self.chance(0.3):
            return self.pick(
                "_", "default", "*.example.org", "example.*", "A.example.org", "a.example.org",
                "x" * 50 + ".org",
            )  # fmt: skip
        label = LOWER + string.digits + "-"
        return ".".join(self.word(label, 1, 8) for _ in range(self.rng.randint(1, 3)))

    def url_path(self) -> str:
        if self.odd(0.15):
            return self.pick("/rt/", "rt", "/a b", "/..", "/a/../b", "", self.text(6))
        if self.chance(0.5):
            return self.pick("/", "/rt", "/git", "/a.b", "/x~y")
        return "/" + self.word(URL_CHARS, 1, 8).strip(".") + self.pick("", "/sub") or "/x"

    def static(self, mount: str) -> dict[str, str]:
        result = {}
        for _ in range(self.rng.randint(1, 2)):
            base = "" if mount == "/" else mount
            location = base + "/" + self.word(URL_CHARS, 1, 8).strip(".") + "s" + self.pick("/", "")
            if self.odd(0.1):
                location = self.pick(mount, mount + "/", "/static/", "/../", self.text(6))
            directory = self.path("/srv/", avoid="$").rstrip("/")
            directory += "/" if location.endswith("/") else ""
            if self.odd(0.1):
                directory = directory.rstrip("/") if directory.endswith("/") else directory + "/"
            result[location] = directory
        return result

    def env_name(self) -> str:
        if self.odd(0.1):
            return self.pick("1X", "A-B", "A B", "", self.text(5))
        if self.chance(0.05):
            return "FCGICOMPOSE_WORKER"
        head = self.word(string.ascii_uppercase + "_", 1, 1)
        return head + self.word(string.ascii_uppercase + string.digits + "_", 0, 12)

    def mapping(
        self, names: Callable[[], str], values: Callable[[], str], high: int = 4
    ) -> dict[str, str]:
        return {names(): values() for _ in range(self.rng.randint(0, high))}

    def integer(self, low: int, high: int) -> int:
        if self.usual(0.9):
            return self.rng.randint(low, min(high, low + 20))
        return self.pick(low - 1, high, high + 1, -1, 2**63 - 1, 0)

    def wrong_type(self) -> Any:
        return self.pick(
            1,
            -5,
            1.5,
            float("nan"),
            True,
            "text",
            [],
            ["a", 1],
            {},
            {"x": 1},
            datetime.date(2024, 1, 2),
            datetime.datetime(2024, 1, 2, 3, 4, 5),
        )

    # -- tables -----------------------------------------------------------------------------

    def route(self) -> dict[str, Any]:
        route: dict[str, Any] = {}
        if self.chance(0.8):
            route["server_name"] = [self.host() for _ in range(self.rng.randint(1, 3))]
        if self.chance(0.4):
            ports = [self.pick(80, 8080, 443, 8443, 81) for _ in range(self.rng.randint(1, 2))]
            route["listen"] = ports if self.hostile else sorted(set(ports))
            if self.odd(0.05):
                route["listen"].append(self.pick(0, 65536, 80))
        path = self.url_path()
        if self.chance(0.8):
            route["path"] = path
        if self.chance(0.3):
            route["balance"] = self.pick("round-robin", "least-conn", "ip-hash")
            if self.odd(0.2):
                route["balance"] = "random"
        if self.chance(0.35):
            route["static"] = self.static(path if path.startswith("/") else "/")
        if self.chance(0.5):
            route["params"] = self.mapping(
                lambda: self.pick("SCRIPT_FILENAME", "CGIT_CONFIG", self.env_name()),
                lambda: self.text(avoid="$"),
            )
        if self.chance(0.2):
            route["keep_conn"] = self.pick(True, False)
        if self.chance(0.05):
            route["default_server"] = self.pick(True, False)
        for key, low, high in (
            ("max_fails", 0, 100),
            ("fail_timeout", 1, 3600),
            ("read_timeout", 1, 86400),
        ):
            if self.chance(0.1):
                route[key] = self.integer(low, high)
        return route

    def app(self) -> dict[str, Any]:
        app: dict[str, Any] = {"command": self.argv()}
        if self.usual(0.9):
            app["user"] = self.account()
        if self.chance(0.2):
            app["group"] = self.account()
        if self.chance(0.5):
            description = self.text(20)
            app["description"] = description if self.hostile else description.strip(" \t\\")
        if self.chance(0.4):
            app["activation"] = self.pick("fd0", "listen-fds") if self.usual(0.95) else "fd3"
        if self.chance(0.6):
            app["workers"] = self.pick(1, 2, 3, 4) if self.usual(0.95) else self.pick(0, 12, 513)
        if self.chance(0.6):
            app["socket"] = self.socket()
        if self.chance(0.15):
            app["socket_mode"] = self.pick("0660", "660", "0770", "0670")
            if self.odd(0.5):
                app["socket_mode"] = self.pick("0640", "0666", "0600", "0x60", "9")
        if self.chance(0.4):
            app["working_directory"] = self.path("/srv/")
        if self.chance(0.5):
            app["environment"] = self.mapping(self.env_name, self.text)
        if self.chance(0.15):
            app["runtime_directory"] = self.pick("rt", "a/b", "cache.d", "private-x", "x" * 255)
            if self.odd(0.5):
                app["runtime_directory"] = self.pick(
                    ".", "..", "a/..", "private", "private/x", "a b", "x" * 256
                )
        if self.chance(0.15):
            app["memory_max"] = self.pick("512M", "1G", "1", "infinity", "16777215T")
            if self.odd(0.5):
                app["memory_max"] = self.pick("0", "16777216T", "99999999999999999999", "1X")
        for key, low, high in (
            ("restart_sec", 0, 3600),
            ("start_limit_burst", 1, 10000),
            ("start_limit_interval_sec", 1, 86400),
            ("tasks_max", 0, 1000000),
            ("limit_nofile", 0, 1048576),
        ):
            if self.chance(0.08):
                app[key] = self.integer(low, high)
        for key in (
            "no_new_privileges",
            "private_tmp",
            "private_devices",
            "protect_kernel",
            "protect_proc",
            "restrict_namespaces",
            "system_call_filter",
            "drop_capabilities",
            "memory_deny_write_execute",
        ):
            if self.chance(0.08):
                app[key] = self.pick(True, False)
        if self.chance(0.08):
            app["protect_system"] = self.pick("no", "yes", "full", "strict")
        if self.chance(0.08):
            app["protect_home"] = self.pick("no", "yes", "read-only", "tmpfs")
        if self.odd(0.05):
            app[self.pick("protect_system", "protect_home")] = self.pick("maybe", "ro")
        if self.chance(0.08):
            app["restrict_address_families"] = self.pick(
                [], ["AF_UNIX"], ["AF_UNIX", "AF_INET", "AF_INET6"], ["AF_DECnet", "AF_VSOCK"]
            )
        if self.odd(0.03):
            app["restrict_address_families"] = self.pick(["AF_UNIXX"], ["af_unix"], "AF_UNIX")
        if self.chance(0.7):
            app["route"] = self.route()
        return app

    def document(self) -> dict[str, Any]:
        """A spec built from scratch."""
        doc: dict[str, Any] = {"version": 1 if self.usual(0.97) else self.pick(2, "1", 1.0, True)}
        if self.chance(0.5):
            doc["defaults"] = {"user": self.account()}
            if self.chance(0.3):
                doc["defaults"]["environment"] = self.mapping(self.env_name, self.text, 2)
            if self.chance(0.2):
                doc["defaults"]["activation"] = self.pick("fd0", "listen-fds")
        if self.chance(0.4):
            doc["nginx"] = {"user": self.account()}
            if self.chance(0.3):
                doc["nginx"]["group"] = self.account()
            if self.chance(0.2):
                doc["nginx"]["conf_dir"] = self.pick(
                    "/etc/nginx/conf.d", "/etc/nginx/sites-enabled", self.path("/etc/")
                )
        apps: dict[str, Any] = {}
        shared_site = self.route() if self.chance(0.4) else None
        for _ in range(self.rng.randint(1, 5)):
            app = self.app()
            if shared_site is not None and "route" in app and self.chance(0.7):
                for key in ("server_name", "listen"):
                    if key in shared_site:
                        app["route"][key] = list(shared_site[key])
                    else:
                        app["route"].pop(key, None)
            apps[self.app_name()] = app
        doc["apps"] = apps
        return doc

    # -- mutations --------------------------------------------------------------------------

    def mutate(self, doc: dict[str, Any]) -> dict[str, Any]:
        """One to four random edits of a parsed spec."""
        doc = copy.deepcopy(doc)
        for _ in range(self.rng.randint(1, 4)):
            tables = _tables(doc)
            parent = self.rng.choice(tables)
            roll = self.rng.random()
            if roll < 0.35 and parent:
                key = self.rng.choice(list(parent))
                parent[key] = self.replacement(key, parent[key])
            elif roll < 0.5 and parent:
                del parent[self.rng.choice(list(parent))]
            elif roll < 0.65 and isinstance(doc.get("apps"), dict) and doc["apps"]:
                name = self.rng.choice(list(doc["apps"]))
                doc["apps"][self.app_name()] = copy.deepcopy(doc["apps"][name])
            elif roll < 0.8:
                key = self.pick(
                    "user", "socket", "workers", "route", "environment", "description", "path",
                    "static", "params", "server_name", "listen", "accept", "type", "colour",
                )  # fmt: skip
                parent[key] = self.replacement(key, parent.get(key))
            else:
                strings = [(t, k) for t in tables for k, v in t.items() if isinstance(v, str)]
                if strings:
                    table, key = self.rng.choice(strings)
                    value = table[key]
                    at = self.rng.randint(0, len(value))
                    table[key] = value[:at] + self.text(4, refused=0.1) + value[at:]
        return doc

    def replacement(self, key: str, old: Any) -> Any:
        """A new value for `key`: mostly of the right kind, sometimes of the wrong type."""
        if self.chance(0.15):
            return self.wrong_type()
        makers: dict[str, Callable[[], Any]] = {
            "command": self.argv,
            "user": self.account,
            "group": self.account,
            "socket": self.socket,
            "server_name": lambda: [self.host() for _ in range(self.rng.randint(1, 3))],
            "path": self.url_path,
            "route": self.route,
            "environment": lambda: self.mapping(self.env_name, self.text),
            "params": lambda: self.mapping(self.env_name, self.text),
            "static": lambda: self.static("/"),
            "workers": lambda: self.integer(1, 512),
            "listen": lambda: [self.pick(80, 8080, 80, 0, 70000)],
            "working_directory": lambda: self.path("/srv/"),
        }
        if key in makers:
            return makers[key]()
        if isinstance(old, bool):
            return not old
        if isinstance(old, int):
            return self.integer(0, 100)
        if isinstance(old, dict):
            return self.mapping(self.env_name, self.text)
        if isinstance(old, list):
            return [self.text(8) for _ in range(self.rng.randint(0, 3))]
        return self.text(12)


def _tables(node: Any) -> list[dict[str, Any]]:
    """Every table in a document, the document itself first."""
    found = []
    if isinstance(node, dict):
        found.append(node)
        for value in node.values():
            found += _tables(value)
    elif isinstance(node, list):
        for value in node:
            found += _tables(value)
    return found


def seeds() -> list[dict[str, Any]]:
    """The sample and golden specs as plain data."""
    return [tomlkit.parse(path.read_text(encoding="utf-8")).unwrap() for path in SEED_FILES]


def spec_texts(count: int, seed: int) -> list[tuple[str, str]]:
    """`count` (origin, TOML text) pairs: mutated samples, fresh specs and mangled text."""
    rng = random.Random(seed)
    gen = Gen(rng)
    samples = seeds()
    out: list[tuple[str, str]] = []
    while len(out) < count:
        gen.hostile = True
        if rng.random() < 0.3:
            origin, doc = "mutated sample", gen.mutate(rng.choice(samples))
        else:
            gen.hostile = rng.random() < 0.35
            origin = "generated, hostile" if gen.hostile else "generated, plausible"
            doc = gen.document()
        try:
            text = tomlkit.dumps(doc)
        except Exception:  # noqa: BLE001  (tomlkit cannot write every value we make: skip it)
            continue
        if gen.hostile and rng.random() < 0.1:
            origin = "mangled TOML text"
            for _ in range(rng.randint(1, 3)):
                at = rng.randint(0, len(text))
                text = text[:at] + gen.text(4, refused=0.2) + text[at + rng.randint(0, 4) :]
        out.append((origin, text))
    return out
