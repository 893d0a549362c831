"""``python -m segbench``: the ``segbench`` command, for launchers that take a module (``torchrun -m segbench``)."""

from segbench.cli import main

if __name__ == "__main__":
    main(prog_name="segbench")
