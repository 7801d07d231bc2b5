"""Entry points, each thin: parse the command line, call the composition root
(`fair_lightning.experiment`) or a library function, print the result or an `error:` line."""


def user_errors() -> tuple[type[Exception], ...]:
    """What a command reports as one `error:` line and exit 2: bad input or settings (a
    file, key or clip named in the message), never a bug, which keeps its traceback."""
    from data_modules.errors import CorpusError
    from data_modules.shards import ShardError
    from fair_lightning.config import ConfigError
    from fair_lightning.models.erasure import ErasureError

    return ConfigError, ShardError, CorpusError, FileNotFoundError, ErasureError


def checkpoint_command(argv: list[str], own: tuple[str, ...]) -> tuple[dict, list]:
    """`ckpt=` and the command's other own arguments; the rest are config overrides."""
    from fair_lightning.config import ConfigError, parse_overrides

    _, pairs = parse_overrides(argv)
    args = {k: v for k, v in pairs if k in ("ckpt", *own)}
    if "ckpt" not in args:
        raise ConfigError("missing ckpt=<path to a .ckpt file>")
    return args, [(k, v) for k, v in pairs if k not in args]
