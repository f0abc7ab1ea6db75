"""Command line: the only place that prints and exits.

Exit codes: 0 success (and "no changes" with --detailed-exitcode), 1 a user error (bad spec,
conflict, failed apply; one line per problem), 2 changes planned (with --detailed-exitcode),
3 an internal error (a bug: details go to a file, or to the terminal with --debug).
"""

from __future__ import annotations

import errno
import os
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from fcgicompose import __version__

EXIT_OK, EXIT_ERROR, EXIT_CHANGES, EXIT_BUG = 0, 1, 2, 3

_ROOT_HELP = "Target root directory (default: the live host /). Runtime actions run only for /."


class _State:
    def __init__(self, debug: bool, color: bool | None) -> None:
        self.debug = debug
        self.color = _wants_color(color, sys.stdout)
        self.color_err = _wants_color(color, sys.stderr)

    def echo(self, text: str, *, err: bool = False, nl: bool = True) -> None:
        """Print; click strips the colours on a stream that should have none."""
        click.echo(text, err=err, nl=nl, color=self.color_err if err else self.color)

    def style(self, text: str, color: str) -> str:
        if not (self.color or self.color_err) or not color:
            return text
        if color == "dim":
            return click.style(text, dim=True)
        if color == "bold":
            return click.style(text, bold=True)
        return click.style(text, fg=color)


def _wants_color(flag: bool | None, stream: Any) -> bool:
    if flag is not None:
        return flag
    if os.environ.get("NO_COLOR"):  # https://no-color.org
        return False
    return bool(stream.isatty())


class _Group(click.Group):
    """Usage errors exit 1 like every user error: 2 means "changes pending"."""

    def main(  # type: ignore[override]
        self, args: list[str] | None = None, prog_name: str | None = None, **extra: Any
    ) -> Any:
        extra.pop("standalone_mode", None)
        try:
            code = super().main(args, prog_name, standalone_mode=False, **extra)
        except click.ClickException as error:
            error.show()
            sys.exit(EXIT_ERROR)
        except click.exceptions.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(EXIT_ERROR)
        sys.exit(code if isinstance(code, int) else EXIT_OK)


@click.group(
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="fcgicompose")
@click.option("--debug", is_flag=True, help="Show tracebacks of internal errors.")
@click.option(
    "--color/--no-color",
    default=None,
    help="Force colour on or off (default: on a terminal, unless NO_COLOR is set).",
)
@click.pass_context
def main(ctx: click.Context, debug: bool, color: bool | None) -> None:
    """Run FastCGI programs as supervised, socket-activated systemd workers behind nginx,
    declared in one TOML spec.

    \b
    Typical use:
      fcgicompose validate fcgi.toml          check the spec, touch nothing
      fcgicompose plan fcgi.toml              show what apply would change
      fcgicompose apply fcgi.toml             change the host (asks first)
      fcgicompose plan fcgi.toml --root DIR   plan against a staging tree instead of /
      fcgicompose plan fcgi.toml --out p.plan && fcgicompose apply p.plan
                                              review now, apply exactly that later
      fcgicompose rollback                    back to the previous generation

    \b
    Exit codes: 0 done (or no changes), 1 user error (one line per problem),
    2 changes pending (plan --detailed-exitcode), 3 internal error (a bug).

    The spec format is described in docs/spec.md; the JSON schema is
    schemas/fcgicompose.schema.json.
    """
    ctx.obj = _State(debug, color)
    tune_collector()


def tune_collector() -> None:
    """Let Python's cycle collector run rarely: one command builds tens of thousands of objects
    (models, rendered files, facts, plan entries) that hold no cycles and all live until it
    ends, so each collection rescans them for nothing. With the default thresholds that
    rescanning made a 5,000-app plan cost 8x a 1,000-app one instead of 5x."""
    import gc

    gc.freeze()  # what is loaded so far (modules, click) is never garbage
    gc.set_threshold(100_000, 50, 100)


def _guard(function: Callable[..., Any]) -> Callable[..., Any]:
    """Turn our errors into one line per problem and bugs into a short message."""
    import functools

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from fcgicompose.errors import FcgiComposeError

        state: _State = click.get_current_context().obj
        try:
            return function(*args, **kwargs)
        except FcgiComposeError as error:
            for problem in error.problems:
                state.echo(state.style(f"error: {problem}", "red"), err=True)
            sys.exit(EXIT_ERROR)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except BrokenPipeError:
            # The reader went away (`fcgicompose graph x | head`): not worth a word.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(EXIT_ERROR)
        except OSError as error:
            where = f"{error.filename}: " if error.filename else ""
            hint = " (hint: run as root, or pass --root)" if error.errno == errno.EACCES else ""
            message = f"error: {where}{error.strerror or error}{hint}"
            state.echo(state.style(message, "red"), err=True)
            sys.exit(EXIT_ERROR)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as error:  # noqa: BLE001 - the last line of defence
            _report_bug(state, error)

    return wrapper


def _report_bug(state: _State, error: Exception) -> NoReturn:
    details = traceback.format_exc()
    if state.debug:
        click.echo(details, err=True)
        where = "above"
    else:
        fd, path = tempfile.mkstemp(prefix="fcgicompose-crash-", suffix=".txt")
        with os.fdopen(fd, "w") as handle:
            handle.write(details)
        where = path
    click.echo(
        state.style(f"internal error: {type(error).__name__}: {error} (details: {where})", "red"),
        err=True,
    )
    click.echo("This is a bug in fcgicompose; please report it with the details.", err=True)
    sys.exit(EXIT_BUG)


def _load(spec_path: str) -> Any:
    from fcgicompose.spec import load_spec

    return load_spec(Path(spec_path), spec_path)


_spec_argument = click.argument("spec", type=click.Path(dir_okay=False))


def _existing_root(ctx: click.Context, param: click.Parameter, root: Path) -> Path:
    # A mistyped or unmounted staging root must not be planned as empty and then filled.
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise click.BadParameter(
            f"{root} {what} (hint: fcgicompose never creates a root; mkdir -p it first)"
        )
    return root


_root_option = click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("/"),
    show_default=True,
    callback=_existing_root,
    help=_ROOT_HELP,
)


@main.command()
@_spec_argument
@click.pass_obj
@_guard
def validate(state: _State, spec: str) -> None:
    """Check SPEC and report every problem at once; touch nothing."""
    loaded = _load(spec)
    workers = sum(app.workers for app in loaded.apps.values())
    apps = len(loaded.apps)
    counts = f"{apps} app{'s' * (apps != 1)}, {workers} worker{'s' * (workers != 1)}"
    state.echo(state.style(f"{spec}: valid ({counts})", "green"))


@main.command()
@_spec_argument
@_guard
def graph(spec: str) -> None:
    """Print the artifact dependency graph of SPEC as Graphviz DOT.

    An edge A -> B means A must be in place before B (render with `dot -Tsvg`).
    """
    from fcgicompose.graph import build_graph, to_dot

    click.echo(to_dot(build_graph(_load(spec))), nl=False)


def _refuse_if_interrupted(root: Path) -> None:
    from fcgicompose.apply import journal_path
    from fcgicompose.errors import FcgiComposeError, Problem

    if journal_path(root).exists():
        raise FcgiComposeError(
            [
                Problem(
                    "an interrupted apply left this root between two sets of files",
                    file=str(journal_path(root)),
                    hint="run `fcgicompose recover` (apply also does it first)",
                )
            ]
        )


def _recover_if_interrupted(state: _State, root: Path, lock_timeout: float, err: bool) -> None:
    """Undo an interrupted apply first; touch nothing when there was none."""
    from fcgicompose.apply import journal_path, locked, recover, run_command
    from fcgicompose.workflow import is_live

    if journal_path(root).exists():
        with locked(root, lock_timeout):
            runner = run_command if is_live(root) else None
            recover(root, lambda line: state.echo(line, err=err), runner)


def _plan(state: _State, spec: str, root: Path, for_apply: bool, loaded: Any = None) -> Any:
    from fcgicompose.errors import FcgiComposeError
    from fcgicompose.workflow import plan_spec_file

    if not for_apply:
        _refuse_if_interrupted(root)
    the_plan, problems = plan_spec_file(Path(spec), spec, root, loaded=loaded, quick=not for_apply)
    if problems and for_apply:
        raise FcgiComposeError(problems)
    for problem in problems:
        state.echo(state.style(f"warning: {problem}", "yellow"), err=True)
    return the_plan


def _save_plan(the_plan: Any, root: Path, spec: str, out: Path) -> None:
    """Write a saved plan: mode 0600 from the start (it holds the spec), atomically."""
    from fcgicompose import savedplan
    from fcgicompose.errors import FcgiComposeError

    if out.exists() and os.path.samefile(out, spec):
        raise FcgiComposeError(f"--out {out} is the spec itself; choose another file")
    if the_plan.blockers:
        raise FcgiComposeError(the_plan.blockers)
    text = savedplan.dumps(the_plan, root, Path(spec))
    temp = out.with_name(f".{out.name}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(text)
    os.replace(temp, out)  # replaces a symlink at `out` itself, never what it points to


@main.command()
@_root_option
@click.pass_obj
@_guard
def recover(state: _State, root: Path) -> None:
    """Undo an apply that was interrupted (killed, power loss) from its journal.

    Puts back the files and record the interrupted apply replaced, so ROOT is wholly on the
    previous generation again; on the live host it also undoes the systemd and nginx steps the
    apply had begun. apply does this by itself before planning; plan refuses until then.
    """
    from fcgicompose.apply import locked, run_command
    from fcgicompose.apply import recover as recover_root
    from fcgicompose.workflow import is_live

    with locked(root):
        # On the live host the units and nginx are brought back to those files too.
        runner = run_command if is_live(root) else None
        if not recover_root(root, lambda line: state.echo(line), runner):
            state.echo("Nothing to recover.")
            return
    state.echo(state.style("Recovered: the previous generation's files are back.", "green"))


@main.command()
@_spec_argument
@_root_option
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also save the plan to FILE for `apply FILE` (holds the spec: keep it secret).",
)
@click.option(
    "--detailed-exitcode",
    is_flag=True,
    help="Exit 0 when nothing would change, 2 when something would, 1 on error.",
)
@click.pass_obj
@_guard
def plan(
    state: _State, spec: str, root: Path, as_json: bool, out: Path | None, detailed_exitcode: bool
) -> None:
    """Show what `apply SPEC` would change under ROOT, and why.

    Lists each file to create (+), update (~, with a diff) or delete (-), hand edits (drift),
    then the systemd and nginx steps apply would take, in order. Changes nothing under ROOT
    (--out only writes the plan file).
    """
    from fcgicompose import report

    the_plan = _plan(state, spec, root, for_apply=False)
    if out is not None:
        _save_plan(the_plan, root, spec, out)
    if as_json:
        state.echo(report.dumps(report.plan_json(the_plan)), nl=False)
    else:
        state.echo(report.plan_text(the_plan, state.style), nl=False)
    if the_plan.blockers:
        sys.exit(EXIT_ERROR)
    if detailed_exitcode and the_plan.has_changes:
        sys.exit(EXIT_CHANGES)


@main.command()
@_spec_argument
@_root_option
@click.option(
    "--auto-approve", is_flag=True, help="Apply without asking (needed without a terminal)."
)
@click.option(
    "--force", is_flag=True, help="Overwrite or delete files edited by hand since the last apply."
)
@click.option("--no-rollback", is_flag=True, help="On failure keep the new files for debugging.")
@click.option(
    "--lock-timeout",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds to wait for another apply on the same root.",
)
@click.option(
    "--json", "as_json", is_flag=True,
    help="Print the plan and what was done (commands run, systemctl calls) as JSON.",
)  # fmt: skip
@click.pass_obj
@_guard
def apply(
    state: _State,
    spec: str,
    root: Path,
    auto_approve: bool,
    force: bool,
    no_rollback: bool,
    lock_timeout: float,
    as_json: bool,
) -> None:
    """Make ROOT match SPEC: write the files as one set, then tell systemd and nginx.

    SPEC is a spec file, or a plan saved by `plan --out FILE`: that exact plan is applied
    without re-planning, and refused if anything it read has changed since.

    Shows the plan first and asks for confirmation on a terminal. On the live root / it then
    runs daemon-reload, starts new sockets, restarts only what changed, tests and reloads nginx,
    and stops removed workers; if a step fails, the previous files and units are restored.
    """
    from fcgicompose import savedplan

    saved = savedplan.is_saved_plan(Path(spec))
    loaded = None if saved else _load(spec)  # a bad spec must not touch the root at all
    _recover_if_interrupted(state, root, lock_timeout, err=as_json)
    # Planned without the lock: apply_plan takes it and refuses if the record or any file the
    # plan changes moved meanwhile. A refused apply so leaves no trace on the root.
    if saved:
        the_plan, inputs = savedplan.loads(Path(spec).read_text(), spec)
        savedplan.check_fresh(the_plan, inputs, root, spec)
        _check_accounts(the_plan, root)
        auto_approve = True  # a saved plan is the approval (like terraform apply FILE)
    else:
        the_plan = _plan(state, spec, root, for_apply=True, loaded=loaded)
    _carry_out(state, the_plan, root, auto_approve, force, no_rollback, lock_timeout, as_json)


def _check_accounts(the_plan: Any, root: Path) -> None:
    """A plan not made from the spec file just now is checked against today's accounts."""
    from fcgicompose.errors import FcgiComposeError
    from fcgicompose.spec import account_problems, parse_spec
    from fcgicompose.state import read_accounts

    accounts = read_accounts(root)
    if accounts is not None and the_plan.spec_text:
        problems = account_problems(parse_spec(the_plan.spec_text, the_plan.spec), *accounts)
        if problems:
            raise FcgiComposeError(problems)


@main.command()
@_root_option
@click.option("--auto-approve", is_flag=True, help="Roll back without asking.")
@click.option(
    "--lock-timeout",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds to wait for another apply on the same root.",
)
@click.pass_obj
@_guard
def rollback(state: _State, root: Path, auto_approve: bool, lock_timeout: float) -> None:
    """Return ROOT to the previous generation's spec through the usual plan and apply.

    Every successful apply keeps its spec under var/lib/fcgicompose/generations/; rollback
    plans the one before the current generation and applies it as a new generation.
    """
    from fcgicompose.apply import generation_spec
    from fcgicompose.errors import FcgiComposeError
    from fcgicompose.spec import parse_spec
    from fcgicompose.state import read_record
    from fcgicompose.workflow import plan_for

    _recover_if_interrupted(state, root, lock_timeout, err=False)
    record, _ = read_record(root)
    previous = record.generation - 1
    if previous < 1:
        raise FcgiComposeError("no previous generation to roll back to")
    folder = generation_spec(root, previous, "x").parent
    specs = sorted(folder.glob("*")) if folder.is_dir() else []
    if len(specs) != 1:
        raise FcgiComposeError(f"generation {previous} was not kept ({folder})")
    state.echo(f"Rolling back from generation {record.generation} to {previous}'s spec.")
    the_plan = plan_for(parse_spec(specs[0].read_text(), specs[0].name), root)
    _check_accounts(the_plan, root)  # as for any apply: the old units may name a gone account
    _carry_out(state, the_plan, root, auto_approve, False, False, lock_timeout)


def _carry_out(
    state: _State,
    the_plan: Any,
    root: Path,
    auto_approve: bool,
    force: bool,
    no_rollback: bool,
    lock_timeout: float,
    as_json: bool = False,
) -> None:
    """Show the plan, get approval, apply it."""
    from fcgicompose import report
    from fcgicompose.apply import apply_plan
    from fcgicompose.errors import FcgiComposeError

    if not as_json:
        state.echo(report.plan_text(the_plan, state.style), nl=False)
    if the_plan.blockers:
        raise FcgiComposeError(the_plan.blockers)
    if not the_plan.has_changes:
        if as_json:
            state.echo(
                report.dumps({"plan": report.plan_json(the_plan), "outcome": None}), nl=False
            )
        return
    if not auto_approve:
        if not sys.stdin.isatty():
            raise FcgiComposeError(
                "refusing to apply without confirmation: no terminal (pass --auto-approve)"
            )
        answer = click.prompt(
            "Apply these changes? Type 'yes' to go on", default="", show_default=False
        )
        if answer != "yes":
            state.echo("Nothing applied.")
            sys.exit(EXIT_ERROR)
    outcome = apply_plan(
        the_plan, root, force=force, rollback=not no_rollback, lock_timeout=lock_timeout,
        progress=lambda line: state.echo(state.style(line, "dim"), err=as_json),
    )  # fmt: skip
    # The host has changed: a reader that went away must not turn that into a failure.
    if as_json:
        document = {"plan": report.plan_json(the_plan), "outcome": report.outcome_json(outcome)}
        _echo_after_the_fact(state, report.dumps(document))
    else:
        _echo_after_the_fact(state, report.outcome_text(outcome, the_plan, state.style))


def _echo_after_the_fact(state: _State, text: str) -> None:
    """Report what was done; if stdout is gone, the exit status alone says it."""
    try:
        state.echo(text, nl=False)
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
