"""Flat config: a script's DEFAULTS dict, then configs/*.yaml, then --key=value, last wins.

    python evaluate.py configs/scifact.yaml --split=val --retrievers=bm25

Every key must exist in DEFAULTS and keeps its default's type; anything else is an error
raised before the script does any work. `--key value` and dashes (`--rerank-depth`) are
accepted too, because that is what people type.
"""
import difflib
import types

import yaml


class ConfigError(ValueError):
    pass


def _cast(key, value, default, where):
    kind = type(default)
    try:
        if isinstance(default, bool):
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if isinstance(default, list):
            items = value if isinstance(value, list) else [v for v in str(value).split(",") if v.strip()]
            item_kind = type(default[0]) if default else str
            return [_cast(key, v.strip() if isinstance(v, str) else v, item_kind(), where) for v in items]
        if isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, str):
            if isinstance(value, (dict, list)):
                raise ValueError
            return "" if value is None else str(value)
    except (TypeError, ValueError):
        pass
    raise ConfigError(f"{where}: {key}={value!r} is not a {kind.__name__} (default {default!r})")


def _check_key(key, defaults, where):
    if key not in defaults:
        close = difflib.get_close_matches(key, defaults, n=1)
        hint = f"; did you mean {close[0]}?" if close else f"; known keys: {', '.join(sorted(defaults))}"
        raise ConfigError(f"{where}: unknown key '{key}'{hint}")


def load_config(defaults, argv):
    """Resolve DEFAULTS + yaml files + --key=value overrides into a namespace."""
    cfg = dict(defaults)
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("--"):
            if not arg.endswith((".yaml", ".yml")):
                raise ConfigError(f"command line: '{arg}' is neither a configs/*.yaml file nor --key=value")
            try:
                with open(arg, encoding="utf-8") as f:
                    data = yaml.safe_load(f) or {}
            except OSError as e:
                raise ConfigError(f"{arg}: cannot read config file ({e.strerror})") from None
            except yaml.YAMLError as e:
                raise ConfigError(f"{arg}: not valid YAML: {e}") from None
            if not isinstance(data, dict):
                raise ConfigError(f"{arg}: a config file holds flat key: value lines, got {type(data).__name__}")
            for key, value in data.items():
                _check_key(key, defaults, arg)
                cfg[key] = _cast(key, value, defaults[key], arg)
            continue
        key, eq, value = arg[2:].partition("=")
        key = key.replace("-", "_")
        _check_key(key, defaults, "command line")
        if not eq:
            # `--flag` alone sets a bool; otherwise the value is the next argument.
            if isinstance(defaults[key], bool) and (i >= len(args) or args[i].startswith("--")):
                value = "true"
            elif i < len(args):
                value = args[i]
                i += 1
            else:
                raise ConfigError(f"command line: --{key} needs a value")
        cfg[key] = _cast(key, value, defaults[key], "command line")
    return types.SimpleNamespace(**cfg)


def check_choice(cfg, key, choices):
    value = getattr(cfg, key)
    values = value if isinstance(value, list) else [value]
    for v in values:
        if v not in choices:
            raise ConfigError(f"{key}={v!r}: choose one of {', '.join(choices)}")
