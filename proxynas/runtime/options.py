"""Command-line options declared where their values live: on the config dataclasses' fields.

A field that is a command-line option carries its flag and help in its metadata::

    epochs: int = field(default=1000, metadata=option("--epochs", help="training epochs per network"))

``add_options`` adds a class's option fields to an argparse parser or argument group, each
defaulting to the field's own default (or to the value of a given instance, for a nested
config whose default differs), so that a default is written in one place only;
``from_args`` builds the config back from the parsed namespace. The argument type comes
from the field's annotation (``int | None`` parses an int); a ``bool`` field is a switch.

A flag's ``dest`` is argparse's own (``--real-batch-size`` -> ``real_batch_size``), and
every action ``add_options`` makes records the field it sets (``action_field``), so a test
can walk a parser and compare each default with the dataclass's.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = [
    "Option",
    "action_field",
    "add_argument",
    "add_options",
    "default_of",
    "from_args",
    "option",
    "options_of",
]

T = TypeVar("T", bound="DataclassInstance")
_KEY = "proxynas.option"  # the field-metadata key an Option is stored under
_FIELD_ATTR = "proxynas_field"  # the attribute add_options sets on each action it makes


@dataclass(frozen=True)
class Option:
    """How a config field appears on the command line (see ``option``)."""

    flag: str
    help: str | Callable[[], str]
    metavar: str | None = None
    choices: Iterable[Any] | Callable[[], Iterable[Any]] | None = None
    type: Callable[[str], Any] | None = None
    old: tuple[str, ...] = ()
    convert: Callable[[Any], Any] | None = None
    derived: bool = False
    switches: tuple[tuple[str, Any], ...] = ()

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    def flags(self) -> tuple[str, ...]:
        """Every spelling that sets this field: the flag, its old spellings and its old switches."""
        return (self.flag, *self.old, *(s for s, _ in self.switches))


def option(
    flag: str,
    *,
    help: str | Callable[[], str],
    metavar: str | None = None,
    choices: Iterable[Any] | Callable[[], Iterable[Any]] | None = None,
    type: Callable[[str], Any] | None = None,
    old: Sequence[str] = (),
    convert: Callable[[Any], Any] | None = None,
    derived: bool = False,
    switches: Mapping[str, Any] | None = None,
) -> dict[str, Option]:
    """Field metadata that makes a config field the command-line option ``flag``.

    ``help``: plain text (a ``%`` is literal), or a function called when the parser is built
    (for text read off a registry). ``choices``: the same, a collection or a function.
    ``type``: what parses the flag's text, if not the field's annotation. ``old``: earlier
    spellings, still accepted (hidden from --help, with a warning when used).
    ``convert``: flag value -> field value, where their units differ (GiB given, bytes held).
    ``derived``: the command computes the field from the flag's text with what only it knows
    (the dataset's class count, the study storage), and passes it to ``from_args`` itself.
    ``switches``: old switches that each set one value, still accepted (hidden from --help, with
    a warning naming the new spelling): ``{"--amp": "bf16"}`` for ``--precision``.
    """
    fixed = tuple((switches or {}).items())
    return {_KEY: Option(flag, help, metavar, choices, type, tuple(old), convert, derived, fixed)}


def options_of(cls: type) -> dict[str, Option]:
    """The option fields of a config dataclass: field name -> Option, in field order."""
    return {f.name: f.metadata[_KEY] for f in dataclasses.fields(cls) if _KEY in f.metadata}


def default_of(source: object, name: str) -> Any:
    """The default of field ``name``: an instance's value, or the class's field default
    (``dataclasses.MISSING`` for a field without one; a ``default_factory`` is called)."""
    if not isinstance(source, type):
        return getattr(source, name)
    f = next(f for f in dataclasses.fields(source) if f.name == name)
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def action_field(action: argparse.Action) -> tuple[type, object | None, str] | None:
    """For an action ``add_options`` made: (the config class; the class or instance whose value is
    its default, or None for an ``unset`` field, whose default is None; the field name). None for
    any other action."""
    return getattr(action, _FIELD_ATTR, None)


class _Renamed(argparse.Action):
    """An old spelling of a renamed flag, or (``nargs=0``) an old switch that set what a valued flag now
    sets, ``--amp`` for ``--precision bf16``: it still works, and says what replaced it."""

    def __init__(self, option_strings: list[str], dest: str, new: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        switch = self.nargs == 0
        use = f"{self.new} {self.const}" if switch else self.new
        print(f"warning: {option_string} is deprecated; use {use}", file=sys.stderr)
        setattr(namespace, self.dest, self.const if switch else values)


def add_argument(container: Any, flag: str, *old: str, **kwargs: Any) -> argparse.Action:
    """``container.add_argument(flag, **kwargs)``, its ``old`` spellings still working (hidden
    from --help, deprecated when used). A required flag is required in one spelling or the
    other, not both."""
    required = kwargs.pop("required", False)
    if required and old:
        container = container.add_mutually_exclusive_group(required=True)
    elif required:
        kwargs["required"] = True
    action = container.add_argument(flag, **kwargs)
    for spelling in old:
        container.add_argument(
            spelling,
            dest=action.dest,
            action=_Renamed,
            new=flag,
            type=action.type or str,  # None converts nothing: str leaves a string as it is
            nargs=action.nargs,
            metavar=action.metavar,
            default=argparse.SUPPRESS,
            help=argparse.SUPPRESS,
        )
    return action


def add_options(
    container: Any,
    cls: type,
    *,
    only: Sequence[str] | None = None,
    exclude: Iterable[str] = (),
    defaults: object | None = None,
    unset: Iterable[str] = (),
    required: Iterable[str] = (),
    helps: Mapping[str, str] | None = None,
    choices: Mapping[str, Iterable[Any]] | None = None,
) -> list[argparse.Action]:
    """Add ``cls``'s option fields to ``container`` (a parser or an argument group).

    ``only``: these fields, in this order (default: every option field, in field order);
    ``exclude``: all but these. ``defaults``: an instance of ``cls`` whose values are the
    defaults (a nested config's own default, e.g. ``SearchConfig``'s ``train``).
    ``unset``: fields whose default the command takes from elsewhere (a baseline's budget
    from its kind): their flags default to None, and ``from_args`` leaves them to its
    ``base``. ``required``: fields the command needs given (a field without a default
    always is). ``helps``: help texts that say what a field means to this command.
    ``choices``: choices read off a registry that the config's module cannot import.
    """
    fields = options_of(cls)
    names = list(only) if only is not None else [n for n in fields if n not in set(exclude)]
    unset, required, helps, given = set(unset), set(required), dict(helps or {}), dict(choices or {})
    unknown = sorted(({*names, *exclude, *unset, *required, *helps, *given}) - fields.keys())
    if unknown:
        raise ValueError(f"{cls.__name__} has no option field {', '.join(unknown)}")
    source = cls if defaults is None else defaults
    hints = typing.get_type_hints(cls)
    actions = []
    for name in names:
        opt = fields[name]
        default = None if name in unset else default_of(source, name)
        must = name in required or default is dataclasses.MISSING
        if default is dataclasses.MISSING:
            default = None
        text = helps.get(name) or (opt.help() if callable(opt.help) else opt.help)
        text = text.replace("%", "%%")  # argparse %-formats help; a field's help is plain text
        kind = _value_type(hints[name])
        if kind is bool and opt.type is None:
            if default is not False:
                raise ValueError(f"{opt.flag}: a switch needs the default False, not {default!r}")
            made = [container.add_argument(opt.flag, action="store_true", default=default, help=text)]
        else:
            allowed = given.get(name, opt.choices() if callable(opt.choices) else opt.choices)
            made = [
                add_argument(
                    container,
                    opt.flag,
                    *opt.old,
                    type=opt.type or (kind if kind in (int, float, str, Path) else str),
                    default=default,
                    help=text,
                    metavar=opt.metavar,
                    choices=list(allowed) if allowed is not None else None,
                    required=must,
                )
            ]
        for action in made:
            setattr(action, _FIELD_ATTR, (cls, source if name not in unset else None, name))
        actions.extend(made)
        for spelling, value in opt.switches:  # hidden, as old spellings are (add_argument)
            container.add_argument(
                spelling,
                dest=made[0].dest,
                action=_Renamed,
                new=opt.flag,
                nargs=0,
                const=value,
                default=argparse.SUPPRESS,
                help=argparse.SUPPRESS,
            )
    return actions


def _value_type(hint: Any) -> Any:
    """The type a field holds, without its ``| None``: ``int | None`` -> int."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        kinds = [k for k in typing.get_args(hint) if k is not type(None)]
        return kinds[0] if len(kinds) == 1 else None
    return hint


def from_args(cls: type[T], args: argparse.Namespace, base: T | None = None, **overrides: Any) -> T:
    """The ``cls`` config the parsed ``args`` give: each option field the command added and the
    user set (a None value is no value: the field keeps ``base``'s value, else its default),
    then ``overrides`` (fields with no flag, or derived ones). ``base``: start from this instance."""
    given = vars(args)
    values: dict[str, Any] = {}
    for name, opt in options_of(cls).items():
        if name in overrides or given.get(opt.dest) is None:
            continue
        if opt.derived:
            raise TypeError(f"{cls.__name__}.{name} is derived from {opt.flag} by the command: pass it as an override")
        value = given[opt.dest]
        values[name] = opt.convert(value) if opt.convert is not None else value
    values.update(overrides)
    return dataclasses.replace(base, **values) if base is not None else cls(**values)
