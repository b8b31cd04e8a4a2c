"""`objlibd service install|uninstall|status` and `objlibd doctor`: thin renderers.

The logic is in objlib_daemon/service/ and objlib_daemon/doctor/; this
module parses flags and prints. The group registers `COMMANDS` automatically.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from objlib_daemon import errors
from objlib_daemon.cli.common import State, emit
from objlib_daemon.config import Config, ConfigError
from objlib_daemon.doctor import run_checks
from objlib_daemon.doctor.report import summary
from objlib_daemon.service import manager as svc
from objlib_daemon.service.steps import Outcome, Plan, apply


def _manager_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option(
        "--launchd", "manager", flag_value=svc.LAUNCHD, help="Use launchd (macOS agent)."
    )(fn)
    return click.option(
        "--systemd", "manager", flag_value=svc.SYSTEMD, help="Use systemd (Linux user unit)."
    )(fn)


def _require_present(manager: str) -> None:
    if not svc.present(manager):
        other = svc.LAUNCHD if manager == svc.SYSTEMD else svc.SYSTEMD
        raise errors.ConfigurationError(
            f"{manager} is not present on this machine: use --{other} where that "
            "applies, run `objlibd run` under your own supervisor, or add --dry-run "
            "to see what would be installed"
        )


@click.group("service")
def service_group() -> None:
    """Run objlibd as a systemd user service (Linux) or a launchd agent (macOS)."""


@service_group.command()
@_manager_options
@click.option(
    "--on-mount",
    is_flag=True,
    help="systemd: start/stop with the library's volume (mount-bound). "
    "launchd: instead of the daemon, a one-shot `objlibd sync` whenever a volume mounts.",
)
@click.option("--dry-run", is_flag=True, help="Print the files and commands; change nothing.")
@click.pass_obj
def install(state: State, manager: str | None, on_mount: bool, dry_run: bool) -> None:
    """Write the unit/agent for this interpreter, config and state dir, and enable it."""
    manager = manager or svc.default_manager()
    config = state.config()
    if not dry_run:
        _require_present(manager)
    plan = svc.plan_install(manager, config, state.config_path, on_mount=on_mount)
    if dry_run:
        _print_dry_run(plan, present=svc.present(manager))
        return
    reachable, why = svc.reachable(manager)
    outcome = apply(plan, run=reachable)
    _print_outcome(plan, outcome, why)


@service_group.command()
@_manager_options
@click.option("--dry-run", is_flag=True, help="Print what would be removed; change nothing.")
@click.pass_obj
def uninstall(state: State, manager: str | None, dry_run: bool) -> None:
    """Stop and disable the service and remove its files (config, state and logs stay)."""
    manager = manager or svc.default_manager()
    if dry_run:
        plan = svc.plan_uninstall(manager, reachable_now=svc.present(manager))
        _print_dry_run(plan, present=svc.present(manager))
        return
    _require_present(manager)
    reachable, why = svc.reachable(manager)
    plan = svc.plan_uninstall(manager, reachable_now=reachable)
    if not any(s.kind == "remove" for s in plan.steps):
        click.echo(f"objlibd is not installed as a {manager} service; nothing to remove.")
        return
    _print_outcome(plan, apply(plan, run=reachable), why)


@service_group.command("status")
@_manager_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def status_cmd(state: State, manager: str | None, as_json: bool) -> None:
    """Installed? Up to date with this interpreter and config? Enabled and running?

    Exit 7 when it is not installed or not running."""
    manager = manager or svc.default_manager()
    config: Config | None
    try:
        config = state.config()
    except ConfigError:
        config = None
    data = svc.status(manager, config=config, config_path=state.config_path)
    emit(data, as_json, _status_text(data))
    # Not installed, or installed and stopped, is an answer, not a crash: the
    # "no daemon" code (7) lets a script tell it from a broken objlibd (1).
    running_or_unknown = data["active"] in (None, "active")
    if not (data["installed"] and running_or_unknown):
        raise click.exceptions.Exit(errors.NO_DAEMON)


@click.command()
@click.option("--online", is_flag=True, help="Also check the store answers (network for gemini).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def doctor(state: State, online: bool, as_json: bool) -> None:
    """Check the whole setup; each problem is one line with its fix. Exit 1 if any."""
    results = run_checks(state.config_path, online=online)
    ok = all(r.ok for r in results)
    text = "\n".join([*(r.line() for r in results), summary(results)])
    emit({"ok": ok, "checks": [r.as_dict() for r in results]}, as_json, text)
    if not ok:
        raise click.exceptions.Exit(errors.UNEXPECTED)


# --- rendering -------------------------------------------------------------------


def _print_dry_run(plan: Plan, *, present: bool) -> None:
    if not present:
        click.echo(f"# note: {plan.manager} is not present on this machine; showing it anyway")
    for step in plan.steps:
        if step.kind == "write":
            click.echo(f"# would write {step.path}")
            click.echo(step.content.rstrip("\n"))
            click.echo()
        elif step.kind in ("remove", "mkdir"):
            click.echo(f"# would {step.describe()}")
    if plan.commands:
        click.echo("# would run:")
        for step in plan.commands:
            click.echo(f"  {step.describe()}")
    for note in plan.notes:
        click.echo(f"# {note}")
    click.echo("# dry run: nothing was written and no command was run")


def _print_outcome(plan: Plan, outcome: Outcome, why: str) -> None:
    for line in outcome.done:
        click.echo(f"done: {line}")
    if outcome.to_run:
        click.echo(f"{why}; run these yourself where it is reachable:")
        for line in outcome.to_run:
            click.echo(f"  {line}")
    for note in plan.notes:
        click.echo(f"note: {note}")
    for line in outcome.failed:
        click.echo(f"failed: {line}", err=True)
    if outcome.failed:
        raise click.exceptions.Exit(errors.UNEXPECTED)


def _status_text(data: dict[str, Any]) -> str:
    lines = [f"manager:   {data['manager']}" + ("" if data["present"] else " (not present)")]
    for name, entry in data["files"].items():
        if entry["installed"]:
            program = entry.get("program") or "?"
            gone = "" if entry.get("program_exists") else " (MISSING: re-run install)"
            lines.append(f"{name + ':':<10} {entry['path']} -> {program}{gone}")
    if not data["installed"]:
        lines.append(
            f"installed: no, objlibd is not installed as a {data['manager']} service "
            "(`objlibd service install` installs it)"
        )
    elif data.get("current") is False:
        lines.append("current:   no, differs from what `objlibd service install` writes now")
    if data["reachable"]:
        lines.append(f"enabled:   {data['enabled']}")
        lines.append(f"active:    {data['active']}")
    else:
        lines.append(f"state:     unknown ({data['reachable_reason']})")
    return "\n".join(lines)


COMMANDS = [service_group, doctor]
