"""Reference readers of what fcgicompose writes: how systemd 252 and nginx 1.22 read it back.

Independent of fcgicompose's renderers on purpose: they follow systemd's and nginx's parsers
(src/shared/conf-parser.c, extract-word.c, specifier.c, env-util.c; ngx_conf_file.c), so a test
can render a value, read it back the way the real program would, and compare with the input.
Every rule here was checked against the real programs in the booted test container
(tests/system/test_system_properties.py does so continuously).

Whatever systemd or nginx would do that is not a plain literal reading (a specifier other than
our own %i, a $ expansion, a line continuation, an unknown escape) raises `Unliteral`, so a
caller never mistakes an expansion for a literal value.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from tests.validators import expand_instance

# ----------------------------------------------------------------------------- systemd

SYSTEMD_WHITESPACE = " \t\n\r"
COMMENTS = "#;"


class Unliteral(ValueError):
    """A value that systemd or nginx would not read literally (or not read at all)."""


@dataclass(frozen=True)
class Assignment:
    """One `Key=value` of a unit file, as systemd's config parser hands it to a key's parser."""

    section: str
    key: str
    value: str
    line: int  # 1-based number of the line the assignment starts on


def unit_assignments(text: str) -> list[Assignment]:
    """Split a unit file into assignments the way conf-parser.c does.

    Lines end at LF (CR and NUL too, but fcgicompose never writes them: they are an error
    here). Leading and trailing whitespace is stripped; lines whose first non-blank character
    is # or ; are comments, even inside a continuation; a line ending in an odd number of
    backslashes is joined with the next non-comment line, the backslash becoming a space.
    """
    if "\r" in text or "\0" in text:
        raise Unliteral("CR or NUL in a unit file: systemd ends a line there")
    assignments: list[Assignment] = []
    section = ""
    continued: str | None = None
    start_line = 0
    for number, raw in enumerate(text.split("\n"), start=1):
        stripped = raw.strip(SYSTEMD_WHITESPACE)
        if stripped[:1] and stripped[0] in COMMENTS:
            continue
        if continued is None and not stripped:
            continue
        line = stripped if continued is None else continued + raw
        if continued is None:
            start_line = number
        if _ends_in_escape(line):
            continued = line[:-1] + " "
            continue
        continued = None
        line = line.strip(SYSTEMD_WHITESPACE)
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise Unliteral(f"line {start_line}: invalid section header {line!r}")
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise Unliteral(f"line {start_line}: missing '=' in {line!r}")
        assignments.append(
            Assignment(
                section,
                key.strip(SYSTEMD_WHITESPACE),
                value.strip(SYSTEMD_WHITESPACE),
                start_line,
            )
        )
    if continued is not None:
        raise Unliteral("file ends inside a line continuation")
    return assignments


def _ends_in_escape(line: str) -> bool:
    trailing = len(line) - len(line.rstrip("\\"))
    return trailing % 2 == 1


# C escapes systemd's cunescape_one() knows, with what they stand for.
_SIMPLE_ESCAPES = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
    '"': '"',
    "'": "'",
    "s": " ",
}


def _cunescape_one(text: str, pos: int) -> tuple[str, int] | None:
    """Decode the escape after a backslash at text[pos:]; None if systemd would not know it."""
    if pos >= len(text):
        return None
    char = text[pos]
    if char in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[char], pos + 1
    if char == "x" and re.fullmatch(r"[0-9a-fA-F]{2}", text[pos + 1 : pos + 3]):
        value = int(text[pos + 1 : pos + 3], 16)
        return (None if value == 0 else chr(value)), pos + 3  # type: ignore[return-value]
    if char in "01234567" and re.fullmatch(r"[0-7]{3}", text[pos : pos + 3]):
        value = int(text[pos : pos + 3], 8)
        return (None if value == 0 or value > 255 else chr(value)), pos + 3  # type: ignore[return-value]
    if char == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", text[pos + 1 : pos + 5]):
        return chr(int(text[pos + 1 : pos + 5], 16)), pos + 5
    if char == "U" and re.fullmatch(r"[0-9a-fA-F]{8}", text[pos + 1 : pos + 9]):
        return chr(int(text[pos + 1 : pos + 9], 16)), pos + 9
    return None


def extract_words(
    text: str, *, unquote: bool = True, cunescape: bool = True, relax: bool = False
) -> list[str]:
    """All words of `text` as extract_first_word() returns them, one call after another.

    With `unquote`, "..." and '...' group (anywhere in a word) and are removed; with
    `cunescape`, backslash escapes are decoded (unknown ones are an error unless `relax`, where
    the backslash is kept). Without `cunescape` a backslash still protects the next character.
    """
    words: list[str] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos] in SYSTEMD_WHITESPACE:
            pos += 1
        if pos >= len(text):
            return words
        word: list[str] = []
        quote = ""
        while pos < len(text):
            char = text[pos]
            if char == "\\":
                if cunescape:
                    decoded = _cunescape_one(text, pos + 1)
                    if decoded is None or decoded[0] is None:
                        if not relax or pos + 1 >= len(text):
                            raise Unliteral(f"unknown or NUL escape at {text[pos : pos + 4]!r}")
                        word += ["\\", text[pos + 1]]
                        pos += 2
                        continue
                    word.append(decoded[0])
                    pos = decoded[1]
                    continue
                if pos + 1 >= len(text):
                    raise Unliteral("trailing backslash")
                word.append(text[pos + 1])
                pos += 2
                continue
            if quote:
                if char == quote:
                    quote = ""
                else:
                    word.append(char)
                pos += 1
                continue
            if unquote and char in "\"'":
                quote = char
                pos += 1
                continue
            if char in SYSTEMD_WHITESPACE:
                break
            word.append(char)
            pos += 1
        if quote:
            raise Unliteral(f"unbalanced quote in {text!r}")
        words.append("".join(word))


def resolve_specifiers(text: str, instance: str) -> str:
    """Expand %% and %i (the only specifiers fcgicompose writes); others are Unliteral."""
    try:
        return expand_instance(text, instance)
    except ValueError as error:
        raise Unliteral(str(error)) from None


def substitute_environment(word: str) -> str:
    """What execution does to one argv word: replace_env_argv() of systemd 252.

    `$$` is a literal `$`; `${NAME}` and a whole-word `$NAME` are expanded (Unliteral here);
    a `$` before anything else, and `$NAME` inside a word, stay as they are.
    """
    if word.startswith("$") and word[1:2] not in ("{", "$"):
        raise Unliteral(f"whole-word variable {word!r} would be expanded and split")
    out: list[str] = []
    pos = 0
    while pos < len(word):
        char = word[pos]
        if char == "$" and pos + 1 < len(word):
            follower = word[pos + 1]
            if follower == "$":
                out.append("$")
                pos += 2
                continue
            if follower == "{":
                raise Unliteral(f"${{...}} in {word!r} would be expanded")
        out.append(char)
        pos += 1
    return "".join(out)


@dataclass(frozen=True)
class ExecCommand:
    """What systemd runs for one ExecStart= command."""

    path: str  # the file executed
    argv: tuple[str, ...]  # argv as the process sees it (argv[0] included)
    prefixes: str = ""


def exec_command(value: str, instance: str) -> ExecCommand:
    """Read an ExecStart= value as config_parse_exec() and execution do (one command only)."""
    first, rest = _first_exec_word(value)
    prefixes = ""
    while first[:1] in ("-", "@", ":", "+", "!"):
        prefixes += first[0]
        first = first[1:]
    if ":" in prefixes or "+" in prefixes or "!" in prefixes or "-" in prefixes:
        raise Unliteral(f"ExecStart= prefix {prefixes!r} changes how the command runs")
    path = resolve_specifiers(first, instance)
    others = extract_words(rest, relax=True)
    if any(word == ";" for word in _raw_words(rest)):
        raise Unliteral("an unquoted ; separates commands")
    resolved = [resolve_specifiers(word, instance) for word in others]
    if "@" in prefixes:
        if not resolved:
            raise Unliteral("@ prefix without an argv[0] word")
        argv = resolved
    else:
        argv = [path, *resolved]
    if not path.startswith("/") or path.endswith("/"):
        raise Unliteral(f"executable path {path!r} is not an absolute file name")
    if re.search(r"[\x00-\x1f\x7f\"'\\]", path):  # string_is_safe()
        raise Unliteral(f"executable name contains special characters: {path!r}")
    return ExecCommand(path, tuple(substitute_environment(word) for word in argv), prefixes)


def _first_exec_word(value: str) -> tuple[str, str]:
    """Split off the first word (unquoted, unescaped) and return it with the unparsed rest."""
    stripped = value.lstrip(SYSTEMD_WHITESPACE)
    # Find where the first word ends: at whitespace outside quotes, honouring backslashes.
    pos, quote = 0, ""
    while pos < len(stripped):
        char = stripped[pos]
        if char == "\\":
            pos += 2
            continue
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in SYSTEMD_WHITESPACE:
            break
        pos += 1
    words = extract_words(stripped[:pos])
    if len(words) != 1:
        raise Unliteral(f"no program in ExecStart={value!r}")
    return words[0], stripped[pos:]


def _raw_words(text: str) -> Iterator[str]:
    """Whitespace-separated raw tokens outside quotes (to spot a bare ';')."""
    token, quote, pos = "", "", 0
    while pos < len(text):
        char = text[pos]
        if char == "\\" and pos + 1 < len(text):
            token += text[pos : pos + 2]
            pos += 2
            continue
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in SYSTEMD_WHITESPACE:
            if token:
                yield token
            token = ""
            pos += 1
            continue
        token += char
        pos += 1
    if token:
        yield token


def environment_assignments(value: str, instance: str) -> list[tuple[str, str]]:
    """Read an Environment= value as config_parse_environ() does: (name, value) pairs."""
    pairs = []
    for word in extract_words(value):
        resolved = resolve_specifiers(word, instance)
        name, sep, val = resolved.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise Unliteral(f"invalid environment assignment {resolved!r}: systemd ignores it")
        pairs.append((name, val))
    return pairs


# Unicode noncharacters: systemd's utf8_is_valid() refuses them ("not UTF-8 clean") and
# ignores the whole assignment.
def systemd_utf8_clean(text: str) -> bool:
    """Whether systemd's UTF-8 check accepts text (it refuses noncharacters and surrogates)."""
    for char in text:
        code = ord(char)
        if 0xD800 <= code <= 0xDFFF or 0xFDD0 <= code <= 0xFDEF or (code & 0xFFFE) == 0xFFFE:
            return False
    return True


def memory_limit(value: str) -> int | None:
    """MemoryMax= in bytes as systemd 252 takes it (None for infinity); Unliteral if ignored."""
    if value == "infinity":
        return None
    found = re.fullmatch(r"([0-9]+)([KMGT]?)", value)
    if not found:
        raise Unliteral(f"MemoryMax={value} is not a size")
    size = int(found.group(1)) << (10 * " KMGT".index(found.group(2) or " "))
    if not 1 <= size < 2**64 - 1:
        raise Unliteral(f"MemoryMax={value} is out of range: systemd ignores it")
    return size


@dataclass(frozen=True)
class Service:
    """The parts of a service instance that carry user values, read back like systemd."""

    description: str
    exec_start: ExecCommand
    environment: dict[str, str]
    working_directory: str
    runtime_directory: tuple[str, ...]
    user: str
    group: str
    memory_max: int | None  # bytes; None: no limit
    keys: tuple[tuple[str, str], ...]  # every (section, key), in order


def read_service(text: str, instance: str) -> Service:
    """Interpret a rendered service template for one instance."""
    assignments = unit_assignments(text)
    for assignment in assignments:
        if not systemd_utf8_clean(assignment.value):
            raise Unliteral(f"line {assignment.line}: not UTF-8 clean for systemd")
    values = _by_key(assignments)
    exec_lines = values.get(("Service", "ExecStart"), [])
    if len(exec_lines) != 1:
        raise Unliteral(f"{len(exec_lines)} ExecStart= lines")
    environment: dict[str, str] = {}
    for value in values.get(("Service", "Environment"), []):
        environment.update(environment_assignments(value, instance))
    runtime: list[str] = []
    for value in values.get(("Service", "RuntimeDirectory"), []):
        runtime += [resolve_specifiers(w, instance) for w in extract_words(value, cunescape=False)]
    return Service(
        description=resolve_specifiers(_one(values, "Unit", "Description"), instance),
        exec_start=exec_command(exec_lines[0], instance),
        environment=environment,
        working_directory=resolve_specifiers(_one(values, "Service", "WorkingDirectory"), instance),
        runtime_directory=tuple(runtime),
        user=resolve_specifiers(_one(values, "Service", "User"), instance),
        group=resolve_specifiers(_one(values, "Service", "Group", ""), instance),
        memory_max=memory_limit(_one(values, "Service", "MemoryMax", "infinity")),
        keys=tuple((a.section, a.key) for a in assignments),
    )


def read_socket_paths(text: str, instance: str) -> list[str]:
    """ListenStream= paths of a socket template for one instance."""
    values = _by_key(unit_assignments(text))
    return [resolve_specifiers(v, instance) for v in values.get(("Socket", "ListenStream"), [])]


def _by_key(assignments: Sequence[Assignment]) -> dict[tuple[str, str], list[str]]:
    values: dict[tuple[str, str], list[str]] = {}
    for assignment in assignments:
        values.setdefault((assignment.section, assignment.key), []).append(assignment.value)
    return values


def _one(
    values: Mapping[tuple[str, str], list[str]], section: str, key: str, default: str | None = None
) -> str:
    found = values.get((section, key), [])
    if not found and default is not None:
        return default
    if len(found) != 1:
        raise Unliteral(f"{len(found)} {key}= lines in [{section}]")
    return found[0]


# ----------------------------------------------------------------------------- nginx

NGINX_SPACE = " \t\r\n"


@dataclass(frozen=True)
class Token:
    """One nginx configuration token."""

    text: str  # after nginx removed quotes and resolved \" \' \\ \t \r \n
    quoted: bool
    variable: bool  # contains a $: nginx compiles it as a variable reference


@dataclass
class Directive:
    """`name args... ;` or `name args... { block }`."""

    name: Token
    args: list[Token]
    block: list[Directive] | None = None
    line: int = 0

    @property
    def words(self) -> list[str]:
        return [self.name.text, *(arg.text for arg in self.args)]


@dataclass
class _Reader:
    text: str
    pos: int = 0
    line: int = 1
    errors: list[str] = field(default_factory=list)


def nginx_parse(text: str) -> list[Directive]:
    """Parse nginx configuration text into directives as ngx_conf_read_token() tokenizes it."""
    reader = _Reader(text)
    directives, closed_by_brace = _parse_block(reader)
    if closed_by_brace:
        raise Unliteral('unexpected "}"')
    return directives


def _parse_block(reader: _Reader) -> tuple[list[Directive], bool]:
    directives: list[Directive] = []
    while True:
        tokens, end, line = _read_statement(reader)
        if end == "eof":
            if tokens:
                raise Unliteral("unexpected end of file, expecting ';' or '}'")
            return directives, False
        if end == "}":
            if tokens:
                raise Unliteral('unexpected "}"')
            return directives, True
        if not tokens:
            raise Unliteral(f"line {line}: unexpected {end!r}")
        directive = Directive(tokens[0], tokens[1:], line=line)
        if end == "{":
            block, closed = _parse_block(reader)
            if not closed:
                raise Unliteral("unexpected end of file, expecting '}'")
            directive.block = block
        directives.append(directive)


def _read_statement(reader: _Reader) -> tuple[list[Token], str, int]:
    """Tokens up to ; { } or end of file, following ngx_conf_read_token() character by character."""
    text = reader.text
    tokens: list[Token] = []
    start_line = reader.line
    need_space = False
    last_space = True
    sharp_comment = False
    quoted = False
    d_quoted = s_quoted = False
    variable = False
    start = 0
    while True:
        if reader.pos >= len(text):
            if need_space or not last_space or d_quoted or s_quoted:
                raise Unliteral("unexpected end of file inside a token")
            return tokens, "eof", start_line
        char = text[reader.pos]
        reader.pos += 1
        if char == "\n":
            reader.line += 1
            sharp_comment = False
        if sharp_comment:
            continue
        if quoted:
            quoted = False
            continue
        if need_space:
            if char in NGINX_SPACE:
                last_space, need_space = True, False
                continue
            if char == ";":
                return tokens, ";", start_line
            if char == "{":
                return tokens, "{", start_line
            if char == ")":
                last_space, need_space = True, False
            else:
                raise Unliteral(f'unexpected "{char}" after a quoted token')
        if last_space:
            start = reader.pos - 1
            if char in NGINX_SPACE:
                continue
            if not tokens:
                start_line = reader.line
            if char in ";{":
                if not tokens:
                    raise Unliteral(f'unexpected "{char}"')
                return tokens, char, start_line
            if char == "}":
                if tokens:
                    raise Unliteral('unexpected "}"')
                return tokens, "}", start_line
            if char == "#":
                sharp_comment = True
                continue
            last_space = False
            if char == "\\":
                quoted = True
            elif char == '"':
                start += 1
                d_quoted = True
            elif char == "'":
                start += 1
                s_quoted = True
            elif char == "$":
                variable = True
            continue
        if char == "{" and variable:
            continue  # ${name}: the brace belongs to the variable
        variable = False
        if char == "\\":
            quoted = True
            continue
        if char == "$":
            variable = True
            continue
        found = False
        if d_quoted:
            if char == '"':
                d_quoted, need_space, found = False, True, True
        elif s_quoted:
            if char == "'":
                s_quoted, need_space, found = False, True, True
        elif char in NGINX_SPACE or char in ";{":
            last_space, found = True, True
        if found:
            raw = text[start : reader.pos - 1]
            value = _nginx_unescape(raw)
            # nginx has no escape for $: wherever a directive takes variables, a $ is one.
            tokens.append(Token(value, need_space, "$" in value))
            if char == ";":
                return tokens, ";", start_line
            if char == "{":
                return tokens, "{", start_line


def _nginx_unescape(raw: str) -> str:
    out: list[str] = []
    pos = 0
    while pos < len(raw):
        char = raw[pos]
        if char == "\\" and pos + 1 < len(raw):
            follower = raw[pos + 1]
            if follower in "\"'\\":
                out.append(follower)
                pos += 2
                continue
            if follower in "trn":
                out.append({"t": "\t", "r": "\r", "n": "\n"}[follower])
                pos += 2
                continue
        out.append(char)
        pos += 1
    return "".join(out)


def walk(directives: Sequence[Directive]) -> Iterator[tuple[tuple[str, ...], Directive]]:
    """Every directive with the names of the blocks around it."""
    for directive in directives:
        yield (), directive
        if directive.block is not None:
            for parents, inner in walk(directive.block):
                yield (directive.name.text, *parents), inner


def literal(token: Token) -> str:
    """A token's text if nginx reads it literally; Unliteral if it holds a variable."""
    if token.variable:
        raise Unliteral(f"{token.text!r} holds a $: nginx reads a variable there")
    return token.text
