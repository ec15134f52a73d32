"""Flat config: a script's DEFAULTS dict, then configs/*.yaml, then --key=value, last wins.

    python evaluate.py configs/scifact.yaml --split=val --retrievers=bm25

Every key must exist in DEFAULTS and keeps its default's type; anything else, a key given twice
included, is an error naming the file and line, raised before the script does any work. A default
of Auto(kind) is "auto" until the script resolves it from the data and the machine (before any
work, into the config.json it saves); a value given instead must be of that kind.
`--key value` and dashes (`--rerank-depth`) are accepted too, because that is what people type.
"""
import ast
import difflib
import io
import math
import sys
import textwrap
import tokenize
import types

import yaml

from common.run import UserError


class ConfigError(UserError, ValueError):
    pass


class Auto:
    """A default the script sizes itself ("auto"); given a value, it must be a `kind` (int, float, bool)."""

    def __init__(self, kind):
        self.kind = kind

    def __repr__(self):
        return "auto"


class ListOf(list):
    """A list default whose items have a type even when it is empty: ListOf(int) reads
    `--dims=384,256` as [384, 256]."""

    def __init__(self, kind, items=()):
        super().__init__(items)
        self.kind = kind

def is_auto(value):
    return value == "auto"


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice (plain PyYAML keeps the last one silently) and
    notes the line of each top-level key, for errors that name it."""
    root, lines = None, {}

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` is flattened by the base class
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}, first on line {seen[key]}", key_node.start_mark)
                seen[key] = key_node.start_mark.line + 1
            except TypeError:  # an unhashable key: the base class reports it
                pass
        if node is self.root:
            self.lines = seen
        return super().construct_mapping(node, deep)


def read_yaml(path):
    """(data, {top-level key: line}) of a config file; any failure is a ConfigError naming the file."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file ({e.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: invalid UTF-8; re-save the file as UTF-8") from None
    try:
        loader = _Loader(text)  # which already refuses control characters
        loader.root = loader.get_single_node()
        data = loader.construct_document(loader.root) if loader.root is not None else None
    except (yaml.YAMLError, ValueError, RecursionError) as e:  # ValueError: an int past 4300 digits
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        line = mark.line + 1 if mark else 0
        if isinstance(e, yaml.reader.ReaderError):  # a control character: marked by position only
            line = text[:e.position].count("\n") + 1
        what = (", ".join(filter(None, (getattr(e, "context", None), getattr(e, "problem", None))))
                or getattr(e, "reason", None)
                or ("nested too deeply" if isinstance(e, RecursionError) else "a number too long to read"))
        raise ConfigError(f"{path}{f':{line}' if line else ''}: not valid YAML ({what}); "
                          "a config file holds flat key: value lines") from None
    return data, loader.lines


def _cast(key, value, default, where):
    if isinstance(default, Auto):
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        try:
            return _cast(key, value, default.kind(), where)
        except ConfigError:
            raise ConfigError(f"{where}: {key}={value!r} is neither auto nor a {default.kind.__name__}") from None
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
            if isinstance(value, (dict, bytes)):
                raise ValueError
            value = [] if value is None else value  # `key:` with nothing after it
            items = value if isinstance(value, list) else [v for v in str(value).split(",") if v.strip()]
            item_kind = getattr(default, "kind", None) or (type(default[0]) if default else str)
            return [_cast(key, v.strip() if isinstance(v, str) else v, item_kind(), where) for v in items]
        if isinstance(value, bool) and isinstance(default, (int, float)):
            raise ValueError  # int(True) is 1: a yes/no is never a number
        if isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if isinstance(default, float):
            if math.isnan(float(value)):
                raise ValueError
            return float(value)
        if isinstance(default, str):
            if isinstance(value, (dict, list, bytes)):
                raise ValueError
            return "" if value is None else str(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: float() of an int past 1e308
        pass
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    raise ConfigError(f"{where}: {key}={shown} is not a {kind.__name__} (default {default!r})")


def _check_key(key, defaults, where):
    if key not in defaults:
        close = difflib.get_close_matches(key, defaults, n=1)
        dashes = "--" if where == "command line" else ""
        hint = (f"; did you mean {dashes}{close[0]}?" if close else f"; known keys: {', '.join(sorted(defaults))}")
        raise ConfigError(f"{where}: unknown key '{key}'{hint} (--help lists them all)")


def _kind(default):
    if isinstance(default, Auto):
        return f"{default.kind.__name__} or auto"
    if isinstance(default, list):
        item = getattr(default, "kind", None) or (type(default[0]) if default else str)
        return f"comma-separated {item.__name__}s"
    return type(default).__name__


def _shown(default):
    if isinstance(default, list):
        return ",".join(map(str, default)) or '""'
    return '""' if default == "" else str(default)


def settings_help(defaults, source):
    """[(group, [(key, kind, default, comment)])] of a DEFAULTS = dict(...) block, read from the script's
    `source`: a comment line of its own opens a group, a comment after a setting describes it, and comment
    lines indented past "#  " continue that description. Keys the source does not show go last, bare."""
    tree = ast.parse(source)
    call = next((node.value for node in tree.body if isinstance(node, ast.Assign)
                 and any(getattr(t, "id", None) == "DEFAULTS" for t in node.targets)
                 and isinstance(node.value, ast.Call)), None)
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    comments = {tok.start[0]: (tok.start[1], tok.string) for tok in tokens if tok.type == tokenize.COMMENT}
    lines = source.splitlines()
    groups, current, shown = [], None, set()
    keywords = sorted(call.keywords if call is not None else [], key=lambda kw: kw.value.lineno)
    line = call.lineno + 1 if call is not None else 0
    for kw in keywords:
        if kw.arg not in defaults:
            continue
        title = []  # comment lines of their own before this setting (adjacent ones joined): a group's title
        for n in range(line, kw.value.lineno):
            if n in comments and not lines[n - 1][:comments[n][0]].strip() and not _continues(comments[n][1]):
                title = (title if n - 1 in comments else []) + [comments[n][1].lstrip("#").strip()]
        if title:
            current = (" ".join(title).rstrip(":"), [])
            groups.append(current)
        if current is None:
            current = ("settings", [])
            groups.append(current)
        end = kw.value.end_lineno
        words = [comments[end][1].lstrip("#").strip()] if end in comments else []
        n = end + 1
        while n in comments and not lines[n - 1][:comments[n][0]].strip() and _continues(comments[n][1]):
            words.append(comments[n][1].lstrip("#").strip())
            n += 1
        line = n
        current[1].append((kw.arg, _kind(defaults[kw.arg]), _shown(defaults[kw.arg]), " ".join(words)))
        shown.add(kw.arg)
    rest = [(k, _kind(v), _shown(v), "") for k, v in defaults.items() if k not in shown]
    return groups + ([("other", rest)] if rest else [])


def _continues(comment):
    """A comment line carrying on the one above it: indented past "#  " to line up under it."""
    return comment.startswith("#  ")


def help_text(defaults, doc, source):
    """--help: the script's docstring, then every setting with its default, type and comment, grouped as
    in its DEFAULTS."""
    out = [(doc or "").strip(), "",
           "Settings: --key=value on the command line, or key: value in a configs/*.yaml given before them",
           "(the command line wins). auto = sized from the data and the machine before any work."]
    for title, rows in settings_help(defaults, source):
        out += ["", *textwrap.wrap(f"{title}:", 100, subsequent_indent="  ")]
        for key, kind, default, comment in rows:
            out.append(f"  --{key}={default}  ({kind})")
            if comment:
                out += textwrap.wrap(comment, 100, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(out) + "\n"


def _print_help(defaults):
    """--help for the script whose main() called load_config: its module's docstring and source."""
    frame = sys._getframe(2)
    module = sys.modules.get(frame.f_globals.get("__name__"))
    path = frame.f_globals.get("__file__")
    try:
        with open(path, encoding="utf-8") as f:
            source = f.read()
    except (OSError, TypeError):
        source = ""
    sys.stdout.write(help_text(defaults, getattr(module, "__doc__", None) or frame.f_globals.get("__doc__"),
                               source or "DEFAULTS = dict()"))


def load_config(defaults, argv):
    """Resolve DEFAULTS + yaml files + --key=value overrides into a namespace. -h or --help prints every
    setting (help_text) and exits."""
    if any(a in ("-h", "--help") for a in argv):
        _print_help(defaults)
        raise SystemExit(0)
    cfg = {k: "auto" if isinstance(v, Auto) else v for k, v in defaults.items()}
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("--"):
            if not arg.endswith((".yaml", ".yml")):
                raise ConfigError(f"command line: '{arg}' is neither a configs/*.yaml file nor --key=value")
            data, lines = read_yaml(arg)
            data = {} if data is None else data  # an empty file or only comments
            if not isinstance(data, dict):
                raise ConfigError(f"{arg}: a config file holds flat key: value lines, got {type(data).__name__}")
            for key, value in data.items():
                where = f"{arg}:{lines[key]}" if key in lines else arg
                if not isinstance(key, str):
                    raise ConfigError(f"{where}: key {key!r} is not a name; known keys: {', '.join(sorted(defaults))}")
                _check_key(key, defaults, where)
                cfg[key] = _cast(key, value, defaults[key], where)
            continue
        key, eq, value = arg[2:].partition("=")
        key = key.replace("-", "_")
        _check_key(key, defaults, "command line")
        if not eq:
            # `--flag` alone sets a bool; otherwise the value is the next argument.
            flag = isinstance(defaults[key], bool) or getattr(defaults[key], "kind", None) is bool
            if flag and (i >= len(args) or args[i].startswith("--")):
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


def check_range(cfg, keys, low, high=math.inf, above=False):
    """Each of `keys` (a name or a list; list values item by item) within [low, high], or (low, high]
    with above=True: a value no run can use is an error before any work, not a crash an hour in."""
    for key in [keys] if isinstance(keys, str) else keys:
        value = getattr(cfg, key)
        if is_auto(value):  # checked once resolved
            continue
        for v in value if isinstance(value, list) else [value]:
            if v < low or v > high or (above and v == low):
                bound = f"{'above' if above else 'at least'} {low}" + (f" and at most {high}" if high < math.inf else "")
                raise ConfigError(f"{key}={v!r}: must be {bound}")
