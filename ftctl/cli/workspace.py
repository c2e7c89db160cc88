"""Workspace commands: init, config show/validate, plugins."""

from __future__ import annotations

from pathlib import Path

import click

from ftctl.cli.main import pass_app


@click.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path), default=".")
@click.option("--model", default="assistant", show_default=True, help="Name of the first (default) model.")
@click.option("--base", default="smollm2-135m-instruct", show_default=True,
              help="Base model: catalogue name, HF directory or .gguf file.")
@click.option("--remote", help="DVC remote URL or path (default: a local directory outside the work tree).")
@pass_app
def init(app, directory, model, base, remote):
    """Make DIRECTORY an ftctl workspace; running it again changes nothing."""
    from ftctl.registry.init import init as do_init

    result = do_init(directory, model=model, base=base, remote=remote)

    def render(r):
        if r["done"]:
            for step in r["done"]:
                app.say(f"  {step}")
            app.say(f"[green]workspace ready[/] at {r['workspace']}")
        else:
            app.say(f"{r['workspace']} is already an ftctl workspace; nothing changed")

    app.emit(result, render)


@click.group()
def config():
    """Show or validate the resolved ftctl.yaml."""


@config.command("show")
@click.option("--model", help="Show one model's merged settings.")
@pass_app
def config_show(app, model):
    """Print the resolved configuration, secrets masked."""
    from ftctl.config import mask

    ws = app.workspace()
    loaded = ws.loaded
    if model:
        data = mask(ws.model(model).model_dump(mode="json"), set(), "")
    else:
        data = loaded.masked()

    def render(d):
        import io

        from ruamel.yaml import YAML

        buf = io.StringIO()
        y = YAML()
        y.default_flow_style = False
        y.dump(d, buf)
        app.console.print(buf.getvalue(), markup=False, highlight=False, end="")

    app.emit(data, render)


@config.command("validate")
@pass_app
def config_validate(app):
    """Check ftctl.yaml, including every plugin section, against its schema."""
    from ftctl.config import load
    from ftctl.pluginconfig import not_set_up, validate_all

    ws = app.workspace()
    loaded = load(ws.config_path, ws.overrides, lazy=False)  # every ${VAR}, used by this command or not
    checked = validate_all(loaded.config)
    missing = not_set_up(loaded.config)

    def render(_r):
        app.say(f"[green]ftctl.yaml is valid[/] ({len(checked)} plugin sections checked)")
        for m in missing:
            app.say(f"[yellow]not set up yet:[/] {m}: the commands that use it will ask for it")

    app.emit({"valid": True, "models": ws.config.model_names(), "checked": checked, "not_set_up": missing}, render)


@click.command()
@click.argument("name", required=False)
@pass_app
def plugins(app, name):
    """List loaded plugins; with NAME, its settings: type, default and description."""
    from ftctl.plugins import registry

    rows = [
        {"kind": r.kind, "name": r.name, "distribution": r.distribution,
         "module": r.cls.__module__, "config_schema": r.cls.Config.model_json_schema()}
        for r in sorted(registry().values(), key=lambda r: (r.kind, r.name))
    ]
    if name:
        chosen = [r for r in rows if r["name"] == name]
        if not chosen:
            from ftctl.errors import UsageError

            raise UsageError(f"no plugin named {name!r}",
                             hint=f"available: {', '.join(sorted({r['name'] for r in rows}))}")
        for r in chosen:
            r["settings"] = _settings(registry()[(r["kind"], r["name"])].cls.Config)
        app.emit(chosen, lambda rs: _render_settings(app, rs))
        return

    def render(rs):
        from rich.table import Table

        t = Table("kind", "name", "distribution", "settings")
        for r in rs:
            props = r["config_schema"].get("properties", {})
            t.add_row(r["kind"], r["name"], r["distribution"], ", ".join(props) or "-")
        app.console.print(t)

    app.emit(rows, render)


def _settings(config_cls) -> list[dict]:
    """Each field of a plugin's Config: name, type, default (or required), description."""
    import typing

    from pydantic_core import PydanticUndefined

    out = []
    for field_name, f in config_cls.model_fields.items():
        ann = f.annotation
        type_name = ann.__name__ if isinstance(ann, type) and not typing.get_args(ann) else None
        default = None if f.is_required() else (f.get_default(call_default_factory=True)
                                                 if f.default is PydanticUndefined else f.default)
        out.append({"name": field_name, "type": type_name or str(ann).replace("typing.", ""),
                    "required": f.is_required(), "default": default, "description": f.description or ""})
    return out


def _render_settings(app, rows) -> None:
    from rich.table import Table

    for r in rows:
        app.say(f"[bold]{r['kind']} {r['name']}[/] ({r['distribution']}, {r['module']})")
        t = Table("setting", "type", "default", "description")
        for s in r["settings"]:
            t.add_row(s["name"], s["type"], "(required)" if s["required"] else repr(s["default"]), s["description"])
        app.console.print(t)
