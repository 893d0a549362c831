"""The ``segbench`` command. Subcommands live next to the code they drive (``segbench/commands/``)
and are imported only when invoked, so ``segbench --help`` is instant."""

from __future__ import annotations

import importlib

import click

# name -> (module, click command object name). One line per subcommand.
COMMANDS: dict[str, tuple[str, str]] = {
    "models": ("segbench.commands.models", "models"),
    "check": ("segbench.commands.check", "check"),
    "train": ("segbench.commands.train", "train"),
    "eval": ("segbench.commands.eval", "evaluate"),
    "predict": ("segbench.commands.predict", "predict"),
    "run": ("segbench.commands.run", "run"),
    "convert": ("segbench.commands.convert", "convert"),
    "speed": ("segbench.commands.speed", "speed"),
    "export": ("segbench.commands.export", "export"),
    "calibrate": ("segbench.commands.calibrate", "calibrate"),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name, (module, _) in COMMANDS.items() if importlib.util.find_spec(module) is not None]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def invoke(self, ctx: click.Context):
        # Every subcommand, including those that catch nothing themselves (export, convert, ...),
        # reports a user's error in one line; segbench.commands.errors says which errors those are.
        from segbench.commands.errors import user_errors

        with user_errors():
            return super().invoke(ctx)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="segbench")
def main() -> None:
    """Train, validate and review semantic-segmentation architectures on your images."""


if __name__ == "__main__":
    main()
