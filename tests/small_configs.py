"""Small options per architecture for wiring tests (shapes, gradients, export): the same code paths as the
paper configurations with fewer channels or a smaller backbone. An architecture missing here is tested
in its default configuration."""

SMALL_OPTIONS: dict[str, dict] = {
    "unet": {"base_width": 8},
}


def small_options(arch: str) -> dict:
    return dict(SMALL_OPTIONS.get(arch, {}))
