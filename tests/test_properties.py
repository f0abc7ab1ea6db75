"""Property tests: any value either is refused with a clean SpecError or means what it says.

For arbitrary strings in every field that reaches a unit file or the nginx config (argv words,
environment values, description, working and runtime directory, socket path, accounts, params,
static locations and directories, server names, paths), the spec either raises SpecError or
loads unchanged, and the generated files, read back the way systemd 252 and nginx read them
(fuzz/reference.py, checked against the real programs by tests/system/test_system_properties.py),
carry exactly those values, with no line or directive added.

And never a traceback: any TOML document, and any text, gives a Spec or a SpecError.

Runs derandomized under CI=true (stable in CI); elsewhere hypothesis explores afresh each run.
"""

from __future__ import annotations

import datetime
import os
import re
from pathlib import Path
from typing import Any

import attrs
import pytest
import tomlkit
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st

from fcgicompose.errors import SpecError
from fcgicompose.graph import build_graph, ordered
from fcgicompose.spec import App, Nginx, Route, Spec, parse_spec
from fuzz import meaning
from fuzz import reference as ref

PROJECT = Path(__file__).resolve().parent.parent
SAMPLE_TEXTS = [p.read_text() for p in sorted((PROJECT / "samples").glob("*.toml"))]
IN_CI = os.environ.get("CI", "").lower() in ("true", "1", "yes")

PROPERTY_SETTINGS = settings(
    max_examples=300,
    deadline=None,
    derandomize=IN_CI,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# Characters that mean something to TOML, systemd or nginx.
SPECIAL = [
    *"%$\"'\\ ;{}#\t=@~,+.:/()[]`!*?&|<>^-_",
    *["%i", "%n", "%%", "$$", "${X}", "$HOME", "\\n", "\\x41", "\\\\", "\x85", "\u2028"],
    *["\xa0", "é", "€", "𝄞", "\U0010fffd"],
]
# Characters the spec must refuse: line breaks and controls, and what systemd calls not UTF-8.
REFUSED = ["\n", "\r", "\x00", "\x0b", "\x1f", "\x7f", "\ufffe", "\uffff", "\ufdd0", "\U0010fffe"]


def texts(max_size: int = 12, *, wild: bool = False) -> st.SearchStrategy[str]:
    """Short strings dense in special characters; `wild` ones may hold anything at all."""
    if wild:
        char = st.one_of(
            st.sampled_from(SPECIAL),
            st.sampled_from(REFUSED),
            st.characters(exclude_categories=("Cs",)),
        )
    else:
        char = st.one_of(
            st.sampled_from(SPECIAL), st.characters(exclude_categories=("Cs", "Cc", "Cn"))
        )
    return st.lists(char, max_size=max_size).map("".join)


ACCOUNT = r"[a-z_][a-z0-9_-]{0,30}"
SOCKET = r"/run/[A-Za-z0-9._@+,=%~-]{1,20}(/[A-Za-z0-9._@+,=%~-]{0,8})?\{worker\}(\.sock)?"
HOST = r"_|(\*\.)?[A-Za-z0-9-]{1,10}(\.[A-Za-z0-9-]{1,10}){0,2}(\.\*)?|[a-z]{47}"
URL_PATH = r"/|(/[A-Za-z0-9._~-]{1,8}){1,3}"
STATIC = r"/static(/[A-Za-z0-9._~-]{1,8}){0,2}/?"
ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]{0,10}"
RUNTIME = r"[A-Za-z0-9._-]{1,8}(/[A-Za-z0-9._-]{1,4})?"
MEMORY = r"[0-9]{1,22}[KMGT]?|infinity"

# The string fields of an app; in each example a few of them get wild values.
FIELDS = [
    "program", "args", "description", "user", "group", "working_directory", "runtime_directory",
    "socket", "environment_names", "environment_values", "memory_max", "server_name", "path",
    "params_names", "params_values", "static_locations", "static_directories",
]  # fmt: skip


def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A value, or None for "leave the key out" (so defaults are exercised too)."""
    return st.one_of(st.none(), strategy)


@st.composite
def app_tables(draw: st.DrawFn) -> dict[str, Any]:
    """One [apps.x] table: every string field special-character rich, a few of them wild.

    Free-text fields (argv, environment and param values, description, directories) get any
    printable text; fields with a pattern get matching values. The wild fields get anything,
    refused characters and pattern violations included, so both outcomes stay frequent.
    """
    wild = draw(st.sets(st.sampled_from(FIELDS), max_size=2))

    def text(field: str, pattern: str | None = None, prefix: str = "") -> st.SearchStrategy[str]:
        if field in wild:
            return st.one_of(texts(wild=True), texts(wild=True).map(lambda t: prefix + t))
        if pattern is not None:
            return st.from_regex(re.compile(pattern), fullmatch=True)
        return texts().map(lambda t: prefix + t)

    program = draw(st.one_of(st.just("/usr/bin/app"), text("program", prefix="/opt/")))
    table: dict[str, Any] = {
        "command": [program, *draw(st.lists(text("args"), max_size=5))],
        "description": draw(optional(text("description"))),
        "user": draw(text("user", ACCOUNT)),
        "group": draw(optional(text("group", ACCOUNT))),
        "working_directory": draw(optional(text("working_directory", prefix="/srv/"))),
        "runtime_directory": draw(optional(text("runtime_directory", RUNTIME))),
        "socket": draw(optional(text("socket", SOCKET))),
        "environment": draw(
            optional(
                st.dictionaries(
                    text("environment_names", ENV_NAME),
                    text("environment_values"),
                    max_size=4,
                )
            )
        ),
        "memory_max": draw(optional(text("memory_max", MEMORY))),
        "workers": draw(optional(st.integers(1, 3))),
        "activation": draw(optional(st.sampled_from(["fd0", "listen-fds"]))),
    }
    if draw(st.booleans()):
        route = {
            "server_name": draw(
                optional(st.lists(text("server_name", HOST), min_size=1, max_size=3))
            ),
            "listen": draw(optional(st.lists(st.integers(1, 65535), min_size=1, max_size=3))),
            "path": draw(optional(text("path", URL_PATH))),
            "params": draw(
                optional(
                    st.dictionaries(
                        text("params_names", ENV_NAME), text("params_values"), max_size=4
                    )
                )
            ),
            "static": draw(
                optional(
                    st.dictionaries(
                        text("static_locations", STATIC),
                        text("static_directories", prefix="/srv/"),
                        max_size=3,
                    )
                )
            ),
        }
        table["route"] = {k: v for k, v in route.items() if v is not None}
    return {k: v for k, v in table.items() if v is not None}


def load(document: dict[str, Any]) -> Spec | None:
    """Load a document through TOML text; None when the spec refuses it cleanly."""
    text = tomlkit.dumps(document)
    try:
        return parse_spec(text, "prop.toml")
    except SpecError as error:
        for problem in error.problems:
            assert "\n" not in str(problem), f"a problem must be one line: {str(problem)!r}"
        event("refused")
        return None


def assert_means_what_it_says(spec: Spec) -> None:
    event("accepted")
    problems = meaning.check(spec, list(ordered(build_graph(spec))))
    assert problems == [], "\n".join(problems)


# ----------------------------------------------------------------------------- meaning


@PROPERTY_SETTINGS
@given(app=app_tables())
@example(
    app={
        "command": ["/usr/bin/app", "$$", "${X}", "%i", "a b", "", 'q"\\', ";"],
        "user": "www-data",
        "description": '50% "q" $X \\ %n',
        "working_directory": "/srv/a b%c",
        "environment": {"A": '%i $X \\ "q" ', "FCGICOMPOSE_WORKER": "mine"},
        "route": {"params": {"P": 'a;b {c} "d" \\'}, "static": {"/static/": "/srv/x y;{}/"}},
    }
)
@example(app={"command": ["/opt/pay$day/${HOME}$$x", "a"], "user": "www-data"})
@example(app={"command": ["/usr/bin/app"], "user": "www-data", "working_directory": "/srv/a\\"})
@example(app={"command": ["/usr/bin/app"], "user": "www-data", "description": "x\uffff"})
@example(app={"command": ["/usr/bin/app"], "user": "www-data", "working_directory": "/srv/a "})
@example(app={"command": ["/usr/bin/app"], "user": "www-data", "memory_max": "0"})
@example(app={"command": ["/usr/bin/app"], "user": "www-data", "route": {"path": "/a/."}})
@example(
    app={"command": ["/usr/bin/app"], "user": "www-data", "route": {"static": {"/../": "/s/"}}}
)
def test_every_string_field_is_refused_or_means_what_it_says(app: dict[str, Any]) -> None:
    spec = load({"version": 1, "apps": {"x": app}})
    if spec is None:
        return
    loaded = spec.apps["x"]
    # The loader keeps every string it accepts exactly as written.
    assert list(loaded.command) == app["command"]
    for key in ("description", "user", "group", "working_directory", "runtime_directory"):
        if key in app:
            assert getattr(loaded, key) == app[key], key
    assert dict(loaded.environment) == app.get("environment", {})
    if "route" in app:
        assert loaded.route is not None
        assert dict(loaded.route.params) == app["route"].get("params", {})
        assert dict(loaded.route.static) == app["route"].get("static", {})
    assert_means_what_it_says(spec)


ROUTED = {"command": ["/usr/bin/app"], "user": "www-data"}


@settings(PROPERTY_SETTINGS, max_examples=100)
@given(apps=st.lists(app_tables(), min_size=2, max_size=5), same_site=st.booleans())
@example(
    apps=[{**ROUTED, "route": {"server_name": [n]}} for n in ("x", "_", "y", "z", "default")],
    same_site=False,
)  # the catch-all's file name was the same as server "default"'s
@example(apps=[{**ROUTED, "route": {}}] * 3, same_site=True)  # a-b and a_b: one upstream name
@example(
    apps=[{**ROUTED, "route": {"server_name": [n]}} for n in ("a.org", "A.org")], same_site=False
)  # nginx compares server names without case
@example(
    apps=[{**ROUTED, "route": {"path": p, "static": {"/s/": "/srv/s/"}}} for p in ("/", "/b")],
    same_site=True,
)  # one static location twice in a server block
@example(apps=[{**ROUTED, "route": {"listen": [80, 80]}}] * 2, same_site=False)
@example(
    apps=[{**ROUTED, "route": {"server_name": ["a.org", "x.org", "A.org"]}}] * 2, same_site=True
)
@example(apps=[{**ROUTED, "route": {"server_name": ["*.a.*"]}}, ROUTED], same_site=False)
def test_several_apps_are_refused_or_mean_what_they_say(
    apps: list[dict[str, Any]], same_site: bool
) -> None:
    """Apps side by side: shared server blocks, colliding names, sockets and locations."""
    names = ["a", "a-b", "a_b", "b", "default"]
    document: dict[str, Any] = {"version": 1, "apps": {}}
    for name, app in zip(names, apps, strict=False):
        if same_site and "route" in app:
            app["route"].pop("server_name", None)
            app["route"].pop("listen", None)
        document["apps"][name] = app
    spec = load(document)
    if spec is not None:
        assert_means_what_it_says(spec)


@PROPERTY_SETTINGS
@given(name=texts(wild=True).filter(lambda n: "/" not in n))
@example(name="a\nExecStartPre=/bin/evil\n")
@example(name="\udcff")  # an undecodable byte in the file name, as os.fsdecode() gives it
def test_the_spec_file_name_cannot_add_a_line(name: str) -> None:
    """The file name is quoted in each generated file's header comment."""
    spec = parse_spec((PROJECT / "samples" / "multi.toml").read_text(), f"/etc/{name}.toml")
    artifacts = list(ordered(build_graph(spec)))
    for artifact in (a for a in artifacts if not a.link_target):
        artifact.content.encode("utf-8")
        head = artifact.content.split("\n")[:2]
        assert all(line.startswith("# ") for line in head), head
    assert_means_what_it_says(spec)


# ----------------------------------------------------------------------------- never a traceback

# Every key the models declare, the top-level tables, and hand-written-unit keys users try.
KNOWN_KEYS = sorted(
    {field.name for model in (App, Route, Nginx) for field in attrs.fields(model)}
    | {"version", "defaults", "nginx", "apps", "accept", "type"}
)

scalars = st.one_of(
    texts(),
    texts(wild=True),
    st.sampled_from(["fd0", "listen-fds", "www-data", "/usr/bin/x", "/run/x{worker}.sock", "0660"]),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from([0, 1, 2, 512, 513, 65535, 65536, -1]),
    st.floats(allow_nan=True),
    st.booleans(),
    st.datetimes(timezones=st.none() | st.just(datetime.UTC)),
    st.dates(),
    st.times(),
)
keys = st.one_of(st.sampled_from(KNOWN_KEYS), texts(6, wild=True))
toml_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=5)),
    max_leaves=25,
)


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    """Spec-shaped documents: known sections and keys, arbitrary values and extra keys."""
    document: dict[str, Any] = draw(st.dictionaries(keys, toml_values, max_size=3))
    if draw(st.booleans()):
        document["version"] = draw(st.one_of(st.just(1), scalars))
    if draw(st.booleans()):
        document["defaults"] = draw(
            st.one_of(st.dictionaries(keys, toml_values, max_size=4), scalars)
        )
    if draw(st.booleans()):
        document["nginx"] = draw(st.one_of(st.dictionaries(keys, toml_values, max_size=4), scalars))
    apps = draw(
        st.dictionaries(
            st.one_of(st.from_regex(r"[a-z][a-z0-9_-]{0,5}", fullmatch=True), texts(5)),
            st.one_of(app_tables(), st.dictionaries(keys, toml_values, max_size=6), scalars),
            max_size=3,
        )
    )
    if apps or draw(st.booleans()):
        document["apps"] = apps
    return document


def spec_or_spec_error(text: str) -> None:
    """Parsing gives a Spec or a SpecError; a Spec renders and means what it says."""
    try:
        spec = parse_spec(text, "doc.toml")
    except SpecError as error:
        assert error.problems
        return
    assert_means_what_it_says(spec)


@PROPERTY_SETTINGS
@given(document=documents())
@example(document={"version": 1.0})
@example(document={"version": True})
def test_any_toml_document_gives_a_spec_or_a_spec_error(document: dict[str, Any]) -> None:
    try:
        text = tomlkit.dumps(document)
    except Exception:  # tomlkit cannot write every Python value: not our input
        assume(False)
        raise
    spec_or_spec_error(text)


@PROPERTY_SETTINGS
@given(
    sample=st.sampled_from(SAMPLE_TEXTS),
    cuts=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 20), texts(8)), max_size=4),
)
def test_any_edit_of_a_sample_gives_a_spec_or_a_spec_error(
    sample: str, cuts: list[tuple[float, int, str]]
) -> None:
    text = sample
    for where, delete, insert in cuts:
        at = int(where * len(text))
        text = text[:at] + insert + text[at + delete :]
    spec_or_spec_error(text)


@PROPERTY_SETTINGS
@given(text=st.text())
def test_any_text_gives_a_spec_or_a_spec_error(text: str) -> None:
    spec_or_spec_error(text)


# ----------------------------------------------------------------------------- the reference


@pytest.mark.parametrize(
    ("line", "argv"),
    [  # (rendered ExecStart= value, argv as systemd 252 ran it in the test container)
        ('"/bin/true" "" "a b" "$$HOME" "100%%" "back\\\\slash" "q\\"d"',
         ["/bin/true", "", "a b", "$HOME", "100%", "back\\slash", 'q"d']),
        ('"/bin/true" "$${X}" "$$" "a$$b" "\\x41" "tab\tx"',
         ["/bin/true", "${X}", "$", "a$b", "A", "tab\tx"]),
        ('@"/usr/local/bin/r$$y" "/usr/local/bin/r$$$$y"', ["/usr/local/bin/r$$y"]),
        ('"/usr/local/bin/r$$y"', ["/usr/local/bin/r$y"]),
    ],
)  # fmt: skip
def test_reference_reads_exec_start_like_systemd(line: str, argv: list[str]) -> None:
    assert list(ref.exec_command(line, "1").argv) == argv


@pytest.mark.parametrize(
    "line",
    [
        '"/bin/true" "${HOME}"',
        '"/bin/true" $HOME',
        '"/bin/true" "%n"',
        '"/usr/local/bin/p${HOME}y"',
    ],
)
def test_reference_refuses_what_systemd_would_expand(line: str) -> None:
    with pytest.raises(ref.Unliteral):
        ref.exec_command(line, "1")


def test_reference_joins_continued_lines_and_skips_comments_like_systemd() -> None:
    # Seen in the container: WorkingDirectory= swallowed the next line; comments never continue.
    text = (
        '[Service]\nWorkingDirectory=/srv/a\\\nEnvironment="E=after"\n'
        '# comment \\\nEnvironment="B=2" \\\n# between\n  "C=3"\n'
    )
    working, environment = ref.unit_assignments(text)
    assert (working.key, working.value) == ("WorkingDirectory", '/srv/a Environment="E=after"')
    assert ref.environment_assignments(environment.value, "1") == [("B", "2"), ("C", "3")]


def test_reference_tokenizes_nginx_quotes_and_variables() -> None:
    (directive,) = ref.nginx_parse('fastcgi_param A "x;y {z} \\"q\\" \\\\" $b;')
    assert [a.text for a in directive.args] == ["A", 'x;y {z} "q" \\', "$b"]
    assert [a.variable for a in directive.args] == [False, False, True]
    with pytest.raises(ref.Unliteral):
        ref.nginx_parse('fastcgi_param A "x"y;')
